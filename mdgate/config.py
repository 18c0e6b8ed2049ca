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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from mdgate.checks.table import CHECKS, DEFAULTS, Stage
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
    n_replicas: Annotated[int, Field(ge=1, le=256)] = 3
    """Independent trajectories per molecule, each with its own velocity seed."""
    enabled: bool = True
    """Run the NVE stage."""
    seed: int = 0
    """Base seed for Maxwell–Boltzmann velocities."""
    device: Device = Device.AUTO
    """``auto`` | ``cpu`` | ``cuda``."""
    record_every: Annotated[int, Field(ge=1)] = 10
    """Record energies and run the stability checks every this many steps."""
    fail_fast: bool = True
    """Stop a trajectory at its first hard failure or when its energy deviation exceeds
    ``fail_fast_margin`` × the bound (an approving trajectory is never shortened)."""
    hold_fs: Annotated[float, Field(ge=0)] = 0.0
    """A bond deviation fails only when its bound stays crossed this long (0 = at the first
    record). At 300 K the oracle's bonds stay far from the bound, so NVE counts any crossing."""
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
    enabled: bool = True
    """``false``: the check is not evaluated at all."""


def _criteria_model(name: str, stage: Stage, *others: Stage, doc: str, stability: bool = False) -> type[BaseModel]:
    """A strict criteria model whose fields are the table's checks of ``stage`` (and ``others``),
    with the table's default bounds (``mdgate.checks.table.DEFAULTS``).
    """
    fields: dict[str, Any] = {}
    if stability:
        fields["completion"] = (bool, Field(True, description="every trajectory must finish its steps"))
        fields["finite"] = (bool, Field(True, description="energies, forces, positions stay finite"))
    for st in (stage, *others):
        for check, (value, required) in DEFAULTS[st].items():
            fields[check] = (Bound, Field(
                default_factory=lambda v=value, r=required: Bound(bound=v, required=r),
                description=f"{CHECKS[check].label} ({CHECKS[check].comparison} bound, {CHECKS[check].unit})"))
    model = create_model(name, __base__=_Strict, __doc__=doc, **fields)
    return model


Criteria = _criteria_model(
    "Criteria", Stage.NVE, Stage.ACCURACY, stability=True,
    doc="The NVE stage's checks (every molecule and replica) and the reference-set accuracy checks.")
StressCriteria = _criteria_model("StressCriteria", Stage.STRESS, stability=True,
                                 doc="The heat-stress stage's stability checks.")
SanityCriteria = _criteria_model("SanityCriteria", Stage.SANITY, doc="The sanity checks before MD.")
PesCriteria = _criteria_model("PesCriteria", Stage.PES, doc="The energy-landscape checks against the oracle.")
OracleCriteria = _criteria_model("OracleCriteria", Stage.ORACLE, doc="Accuracy on the model's own MD frames.")


class SanitySettings(_Strict):
    """Sanity checks before any MD: invariance, batching, energy–force consistency, relaxation."""

    enabled: bool = True
    """Run the stage."""
    required: bool = True
    """A failing required sanity check rejects the model without running MD."""
    seed: int = 0
    """Seed of the random rotations, translations, permutations and directions."""
    n_rotations: Annotated[int, Field(ge=1, le=32)] = 3
    """Random rotations (each with a random translation) per molecule."""
    n_directions: Annotated[int, Field(ge=1, le=64)] = 6
    """Random directions in configuration space for the finite-difference check."""
    fd_step_A: Annotated[float, Field(gt=0, le=0.1)] = 0.01
    """Finite-difference step (central differences) in Å."""
    relax_fmax_eV_per_A: Annotated[float, Field(gt=0)] = 0.05
    """Relaxation stops when every force component is below this."""
    relax_steps: Annotated[int, Field(ge=0)] = 200
    """Optimizer step budget (0 = no relaxation)."""
    criteria: SanityCriteria = Field(default_factory=SanityCriteria)  # type: ignore[valid-type]


class StressSettings(_Strict):
    """Heat stress: Langevin NVT (BAOAB) with a temperature ramp, then a hold."""

    enabled: bool = True
    """Run the stage."""
    required: bool = True
    """Informational stage when false (its figures are reported, never decide)."""
    start_temperature_K: Annotated[float, Field(gt=0, le=5000)] = 300.0
    """Thermostat target at t = 0 (also the initial velocities' temperature)."""
    end_temperature_K: Annotated[float, Field(gt=0, le=5000)] = 1000.0
    """Thermostat target at the end of the ramp, kept during the hold."""
    ramp_ps: Annotated[float, Field(ge=0)] = 1.5
    """Duration of the linear ramp."""
    hold_ps: Annotated[float, Field(ge=0)] = 0.5
    """Duration of the hold at ``end_temperature_K``."""
    friction_per_ps: Annotated[float, Field(gt=0, le=1000)] = 10.0
    """Langevin friction γ (1/ps): 10/ps follows a 1.5 ps ramp within ~0.1 ps."""
    timestep_fs: Annotated[float, Field(gt=0, le=10)] = 0.5
    """BAOAB time step in femtoseconds."""
    n_replicas: Annotated[int, Field(ge=1, le=256)] | None = None
    """Trajectories per molecule (``null`` = as in ``md.n_replicas``)."""
    seed: int = 1
    """Seed of the stage's initial velocities and thermostat noise (its own, not the NVE seed)."""
    hold_fs: Annotated[float, Field(ge=0)] = 50.0
    """A bond deviation fails only when its bound stays crossed this long: at 1000 K a C–H
    bond's overshoot lasts a few fs (its period is 11 fs), a broken bond stays broken. Calibrated
    on the oracle's own ramps (docs/protocol.md)."""
    criteria: StressCriteria = Field(default_factory=StressCriteria)  # type: ignore[valid-type]

    @property
    def n_steps(self) -> int:
        """Steps of ramp plus hold."""
        return max(1, round((self.ramp_ps + self.hold_ps) * 1000.0 / self.timestep_fs))

    @property
    def ramp_steps(self) -> int:
        """Steps of the ramp."""
        return round(self.ramp_ps * 1000.0 / self.timestep_fs)


class Undecided(StrEnum):
    """What a molecule whose failure rate is still undecided at ``rates.max_replicas`` becomes."""

    REJECT = "reject"
    REVIEW = "review"


class RateSettings(_Strict):
    """Decide each molecule of an MD stage on its failure rate over trajectories, with confidence,
    running confirmation replicas while it is undecided.

    A molecule fails when the failure rate's interval lies above ``acceptable_failure_rate`` and
    passes when it lies below ``unacceptable_failure_rate`` (two-sided Wilson interval at
    ``confidence``); between, ``batch_replicas`` more trajectories of that molecule run, up to
    ``max_replicas``.
    A molecule with no failing trajectory passes. The operating characteristic of these defaults is in docs/protocol.md.
    """

    enabled: bool = True
    """``false``: any failing trajectory fails its molecule (no confirmation replicas)."""
    acceptable_failure_rate: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """A rate a usable model may have: shown above it, the molecule fails."""
    unacceptable_failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    """A rate no usable model has: shown below it, the molecule passes."""
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.9
    """Coverage of the two-sided Wilson interval (0.9: each bound one-sided at 95 %)."""
    batch_replicas: Annotated[int, Field(ge=1, le=64)] = 3
    """Trajectories added per round for an undecided molecule (batched together)."""
    max_replicas: Annotated[int, Field(ge=1, le=256)] = 12
    """Cap on a molecule's trajectories per stage."""
    undecided: Undecided = Undecided.REJECT
    """At the cap: ``reject``, or ``review`` (PendingReview when the gate's review is on, else Rejected)."""

    @model_validator(mode="after")
    def _ordered(self) -> RateSettings:
        if self.acceptable_failure_rate >= self.unacceptable_failure_rate:
            raise ValueError(f"acceptable_failure_rate ({self.acceptable_failure_rate}) must be below "
                             f"unacceptable_failure_rate ({self.unacceptable_failure_rate})")
        return self


class OracleKind(StrEnum):
    """Who judges the forces on frames of the candidate's own trajectories."""

    XTB = "xtb"
    PARENT = "parent"
    ASE = "ase"


class OracleSettings(_Strict):
    """On-trajectory accuracy: frames of the candidate's own MD evaluated by an oracle."""

    enabled: bool = True
    """Run the stage."""
    required: bool = True
    """Informational stage when false."""
    kind: OracleKind = OracleKind.XTB
    """``xtb`` (GFN2-xTB through tblite), ``parent`` (the parent model) or ``ase`` (a calculator)."""
    calculator: str | None = None
    """For ``ase``: import path ``package.module:Class`` of an ASE calculator."""
    calculator_kwargs: dict[str, Any] = Field(default_factory=dict)
    """For ``ase``: keyword arguments of the calculator."""
    level_of_theory: str | None = None
    """For ``ase``: what the calculator computes (compared with the model's declared level)."""
    parent_model: Path | None = None
    """For ``parent``: the parent model file (the gate fetches the version named by mdgate.parent)."""
    frames_per_trajectory: Annotated[int, Field(ge=1, le=100)] = 3
    """Frames taken from each trajectory, evenly spaced over the part it completed."""
    criteria: OracleCriteria = Field(default_factory=OracleCriteria)  # type: ignore[valid-type]


class PesSettings(_Strict):
    """The energy landscape against the oracle, before MD: conformer energies, rigid torsion
    profiles, harmonic frequencies and close contacts (``oracle.kind`` judges them).
    """

    enabled: bool = True
    """Run the stage."""
    required: bool = True
    """Informational stage when false."""
    n_conformers: Annotated[int, Field(ge=1, le=200)] = 8
    """ETKDG embeddings per molecule, each relaxed by the oracle; unique minima are kept."""
    seed: int = 0
    """Seed of the embeddings."""
    oracle_fmax_eV_per_A: Annotated[float, Field(gt=0)] = 0.01
    """The oracle's relaxations stop when every force component is below this."""
    oracle_max_steps: Annotated[int, Field(ge=1)] = 300
    """Step budget of each oracle relaxation (BFGS)."""
    distinct_meV: Annotated[float, Field(ge=0)] = 2.0
    """Two minima closer in oracle energy than this are one conformer."""
    conformer_window_meV: Annotated[float, Field(gt=0)] = 250.0
    """Conformers more than this above the lowest (oracle) are left out of the energy checks
    (the usual 6 kcal/mol conformer-ensemble window; Boltzmann factor 6e-5 at 300 K)."""
    relax_fmax_eV_per_A: Annotated[float, Field(gt=0)] = 0.01
    """The model's relaxations from the oracle's minima stop below this force (FIRE, batched); the
    lowest one is where the model's frequencies are taken."""
    relax_max_steps: Annotated[int, Field(ge=0)] = 200
    """Step budget of the model's relaxations."""
    torsion_step_deg: Annotated[float, Field(gt=0, le=120)] = 30.0
    """Angle step of the relaxed torsion scans (a full turn)."""
    torsion_fmax_eV_per_A: Annotated[float, Field(gt=0)] = 0.05
    """Each point of a relaxed torsion scan (the torsion held) stops below this force."""
    torsion_max_steps: Annotated[int, Field(ge=1)] = 100
    """Step budget of each scan point's relaxation."""
    torsion_window_meV: Annotated[float, Field(gt=0)] = 250.0
    """Torsion angles where the oracle's energy rises more than this above the start are left out
    (Boltzmann factor 6e-5 at 300 K: what production MD visits, with a margin)."""
    hessian_step_A: Annotated[float, Field(gt=0, le=0.05)] = 0.005
    """Finite-difference step of the Hessian (central differences of the forces)."""
    imaginary_threshold_cm1: Annotated[float, Field(ge=0)] = 100.0
    """A mode counts as imaginary below minus this (a methyl rotor at 30 cm⁻¹ goes slightly
    imaginary with the residual force of any relaxation; that is no saddle point)."""
    contact_max_distance_A: Annotated[float, Field(gt=0)] = 2.6
    """Non-bonded pairs closer than this at the start geometry are pulled together (and every bond):
    geminal H–H (1.8 Å) and 1–3 pairs (2.1–2.5 Å), the pairs hot MD pushes together."""
    contact_min_distance_A: Annotated[float, Field(gt=0)] = 0.5
    """How close the pulls bring each pair."""
    contact_step_A: Annotated[float, Field(gt=0, le=0.5)] = 0.1
    """Distance step of the pulls (a pull stops at the model's wall, ``contact_reach_meV``)."""
    contact_reach_meV: Annotated[float, Field(gt=0)] = 2000.0
    """A pull counts until the model's energy has risen this much (23 kT at the stress ramp's
    1000 K: MD does not climb higher, and a well behind that wall is never found)."""
    contact_tolerance_meV: Annotated[float, Field(ge=0)] = 20.0
    """A model well deeper than this is checked against the oracle's curve on the same pull."""
    cache_dir: Path | None = None
    """Where the oracle's side is cached (``null``: ``$MDGATE_CACHE_DIR/pes`` or ``~/.cache/mdgate/pes``)."""
    criteria: PesCriteria = Field(default_factory=PesCriteria)  # type: ignore[valid-type]


class GateConfig(_Strict):
    """Everything a gate applies: MD settings, criteria and the molecule sets."""

    md: MDSettings = Field(default_factory=MDSettings)
    """The NVE stage (today's stage)."""
    criteria: Criteria = Field(default_factory=Criteria)  # type: ignore[valid-type]
    """The NVE stage's checks and the reference-set accuracy checks."""
    sanity: SanitySettings = Field(default_factory=SanitySettings)
    stress: StressSettings = Field(default_factory=StressSettings)
    pes: PesSettings = Field(default_factory=PesSettings)
    """The energy landscape against the oracle (before MD)."""
    oracle: OracleSettings = Field(default_factory=OracleSettings)
    rates: RateSettings = Field(default_factory=RateSettings)
    """Failure rates of the MD stages (NVE, stress), decided with confidence."""
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
