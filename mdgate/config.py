"""Gate configuration: MD settings, criteria and molecule sets, as strict pydantic models.

Loaded from YAML with :func:`load_config`; every error names the file, the field and the value.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mdgate.errors import ConfigError


class Device(StrEnum):
    """Where the MD runs. ``auto`` picks CUDA when a GPU is visible, else the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Compile(StrEnum):
    """Whether to compile the model for MD."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


#: ``compile: auto`` compiles when molecules × replicas × atoms × steps reaches this.
COMPILE_MIN_ATOM_STEPS = 300_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MDSettings(_Strict):
    """NVE molecular dynamics settings."""

    timestep_fs: Annotated[float, Field(gt=0, le=10)] = 0.5
    """Velocity Verlet time step in femtoseconds."""
    n_steps: Annotated[int, Field(gt=0)] = 4000
    """MD steps per trajectory (4000 × 0.5 fs = 2 ps, the hand-made report's shortest run)."""
    temperature_K: Annotated[float, Field(gt=0, le=5000)] = 300.0
    """Initial temperature; velocities are rescaled to exactly this (3N−6 degrees of freedom)."""
    n_replicas: Annotated[int, Field(ge=1, le=256)] = 1
    """Independent trajectories per molecule, each with its own velocity seed."""
    seed: int = 0
    """Base seed for Maxwell–Boltzmann velocities."""
    device: Device = Device.AUTO
    """``auto`` | ``cpu`` | ``cuda``."""
    record_every: Annotated[int, Field(ge=1)] = 10
    """Record energies and run the stability checks every this many steps."""
    fail_fast: bool = True
    """Stop a trajectory at its first hard failure or when its energy deviation exceeds
    ``fail_fast_margin`` × the bound (an approving trajectory is never shortened)."""
    fail_fast_margin: Annotated[float, Field(ge=1.0)] = 1.0
    """Multiple of the energy-deviation bound at which a trajectory is stopped early."""
    neighbor_skin_A: Annotated[float, Field(ge=0)] = 0.0
    """Neighbour-list skin in Å (0 = exact cutoff pairs every step, measured fastest for small
    molecules on the CPU: pairs beyond the cutoff cost model time); rebuilt when an atom moved
    more than half of it."""
    threads: Annotated[int, Field(ge=0)] = 0
    """torch CPU threads for this process (0 = leave torch's default)."""
    compile: Compile = Compile.AUTO
    """Compile the model's representation with ``torch.compile`` (measured ~2× faster on a CPU,
    forces equal to float32 rounding; checked against the eager model before MD, falling back to
    eager on any mismatch or failure). ``auto``: only when the MD work is at least
    ``COMPILE_MIN_ATOM_STEPS`` atom-steps, since compiling costs ~30 s once."""


class Bound(_Strict):
    """A bound on a measured value; ``required`` checks decide the verdict."""

    bound: float | None
    """The limit (``null`` = only report the value)."""
    required: bool = True
    """Required checks decide the verdict; informational ones are only reported."""


def _bound(value: float | None, required: bool = True, desc: str = "") -> Any:
    return Field(default_factory=lambda: Bound(bound=value, required=required), description=desc)


class Criteria(_Strict):
    """The checks applied to every molecule and replica. Sources are in the README."""

    completion: bool = True
    """Every trajectory must finish its steps (required when true)."""
    finite: bool = True
    """Energies, forces and positions must stay finite (required when true)."""
    max_force_eV_per_A: Bound = _bound(25.0, True, "largest force component magnitude")
    max_temperature_K: Bound = _bound(2000.0, True, "temperature blow-up")
    max_bond_deviation_A: Bound = _bound(0.5, True, "bond length change from t=0 (Fu et al.)")
    drift_slope_meV_per_atom_per_ps: Bound = _bound(0.5, True, "|slope| of linear fit of E_tot(t)")
    max_energy_deviation_meV_per_atom: Bound = _bound(2.0, True, "max |E_tot(t) − E_tot(0)|")
    total_drift_percent: Bound = _bound(1.0, False, "|E_final − E0| / |E0| (hand-made report)")
    drift_over_kinetic_std: Bound = _bound(None, False, "|fitted drift| / σ(E_kin)")
    min_force_r2: Bound = _bound(0.95, True, "force R² on the reference set (hand-made report)")
    force_mae_eV_per_A: Bound = _bound(None, False, "force MAE on the reference set")
    energy_mae_meV_per_atom: Bound = _bound(None, False, "energy MAE per atom on the reference")


class GateConfig(_Strict):
    """Everything a gate applies: MD settings, criteria and the molecule sets."""

    md: MDSettings = Field(default_factory=MDSettings)
    criteria: Criteria = Field(default_factory=Criteria)
    molecules: Path | None = None
    """Validation set (extxyz or ASE db); ``null`` = the packaged default set."""
    reference: Path | None = None
    """Reference set with energies/forces; ``null`` = packaged default (when molecules is too)."""

    def sha256(self) -> str:
        """Return the sha256 of the canonical JSON of this config (what the gate applied)."""
        return config_sha256(self)


def config_sha256(config: GateConfig) -> str:
    """Return the sha256 of the canonical JSON form of ``config``."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    value = first.get("input")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: field '{field}' = {value!r}: {msg}{more}"


def parse_config(data: Any, source: str = "<config>") -> GateConfig:
    """Validate a mapping into a :class:`GateConfig`.

    Raises:
        ConfigError: naming the source, the field and the value.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return GateConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from e


def load_config(path: str | Path | None) -> GateConfig:
    """Load a gate config from a YAML file; ``None`` gives the packaged defaults.

    Relative molecule/reference paths are resolved against the config file's folder.

    Raises:
        ConfigError: if the file is missing, is not YAML, or does not validate.
    """
    if path is None:
        return GateConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where} malformed YAML: {problem}") from e
    config = parse_config(data, str(path))
    for key in ("molecules", "reference"):
        value = getattr(config, key)
        if value is not None and not value.is_absolute():
            setattr(config, key, (path.parent / value).resolve())
    return config
