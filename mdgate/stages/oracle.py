"""Oracles for on-trajectory accuracy: who computes reference forces on frames taken from the
candidate's own MD (both MD stages), where a test set made at equilibrium never goes.

* ``xtb``: GFN2-xTB through tblite (the level of the packaged molecule set);
* ``parent``: the parent model (a distilled student must reproduce its teacher where the student
  actually goes);
* ``ase``: any ASE calculator, by import path ``package.module:Class`` and keyword arguments.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from mdgate.checks.evaluate import check, enabled
from mdgate.checks.table import Stage
from mdgate.checks.verdict import stage_result
from mdgate.config import GateConfig, OracleKind, OracleSettings
from mdgate.errors import ConfigError, MdgateError
from mdgate.potentials import Potential
from mdgate.potentials.predict import PotentialCalculator, predict
from mdgate.results import StageResult

#: A frame: (stage, molecule, atomic numbers [n], positions [n, 3] Å).
Frame = tuple[str, str, np.ndarray, np.ndarray]


@dataclass
class Oracle:
    """Reference forces for frames. ``forces`` returns ``None`` for a frame it could not compute."""

    name: str
    level_of_theory: str | None
    potential: Potential | None = None
    calculator_factory: Any = None
    failures: list[str] = field(default_factory=list)
    key: str | None = None
    """What identifies the oracle's results for caching (``None``: not cached)."""

    def calculator(self) -> Any:
        """A fresh ASE calculator of the oracle (for its own relaxations)."""
        if self.potential is not None:
            return PotentialCalculator(self.potential)
        return self.calculator_factory()

    def evaluate(self, structures: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (eV) and forces (eV/Å) of ``(numbers, positions)`` structures; a structure
        the oracle could not compute gets energy and forces NaN (and a line in ``failures``).
        """
        if self.potential is not None:
            return predict(self.potential, structures)
        energies, forces = np.full(len(structures), np.nan), []
        calc, last = None, None
        for k, (z, x) in enumerate(structures):
            if calc is None or last is None or not np.array_equal(z, last):
                calc, last = self.calculator_factory(), z
            atoms = Atoms(numbers=z, positions=x)
            atoms.calc = calc
            try:
                energies[k] = atoms.get_potential_energy()
                forces.append(np.asarray(atoms.get_forces(), float))
            except Exception as e:  # an SCF that does not converge on a squeezed geometry
                self.failures.append(f"{atoms.get_chemical_formula()}: {type(e).__name__}: {str(e)[:80]}")
                forces.append(np.full((len(z), 3), np.nan))
                calc = None
        return energies, forces

    def forces(self, frames: list[Frame]) -> list[np.ndarray | None]:
        """Reference forces (eV/Å) of each frame, ``None`` where the oracle failed on it."""
        if self.potential is not None:
            _, f = predict(self.potential, [(z, x) for _, _, z, x in frames])
            return list(f)
        out: list[np.ndarray | None] = []
        for stage, mol, z, x in frames:
            atoms = Atoms(numbers=z, positions=x)
            atoms.calc = self.calculator_factory()
            try:
                out.append(np.asarray(atoms.get_forces(), float))
            except Exception as e:  # an exploded frame an SCF cannot converge on
                self.failures.append(f"{stage}/{mol}: {type(e).__name__}: {str(e)[:80]}")
                out.append(None)
        return out


def _xtb() -> Any:
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def make_oracle(settings: OracleSettings, parent: Potential | None = None,
                parent_level: str | None = None) -> Oracle:
    """The oracle ``settings`` name.

    Raises:
        ConfigError: an ``ase`` oracle whose calculator cannot be imported, or ``parent``
            without a parent model.
    """
    if settings.kind == OracleKind.XTB:
        try:
            import tblite.ase  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"oracle 'xtb' needs the tblite package ({e}); install mdgate's dependencies") from e
        return Oracle("GFN2-xTB (tblite)", "GFN2-xTB", calculator_factory=_xtb, key="tblite GFN2-xTB")
    if settings.kind == OracleKind.PARENT:
        if parent is None:
            raise ConfigError("oracle 'parent' needs the parent model: set oracle.parent_model, or register the "
                              "version with mdgate.parent")
        return Oracle("parent model", parent_level, potential=parent)
    path = settings.calculator or ""
    module, _, cls = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"oracle.calculator = {path!r}: cannot import it ({type(e).__name__}: {e}); "
                          "use 'package.module:Class'") from e
    kwargs = dict(settings.calculator_kwargs)
    return Oracle(path, settings.level_of_theory, calculator_factory=lambda: factory(**kwargs),
                  key=json.dumps([path, kwargs], sort_keys=True, default=str))


def pick_frames(snapshots: list[tuple[int, np.ndarray]], k: int) -> list[tuple[int, np.ndarray]]:
    """``k`` snapshots evenly spaced over those recorded (the last one always included)."""
    if len(snapshots) <= k:
        return list(snapshots)
    idx = np.unique(np.round(np.linspace(len(snapshots) - 1, 0, k)).astype(int))
    return [snapshots[i] for i in sorted(idx)]


def evaluate_oracle(oracle: Oracle, candidate: Potential, frames: list[Frame]) -> dict[str, Any]:
    """Candidate vs oracle forces on ``frames``: R², MAE, RMSE overall, per stage, per molecule.

    Raises:
        MdgateError: the oracle could not compute a single frame.
    """
    from mdgate.checks.metrics import force_accuracy

    ref = oracle.forces(frames)
    ok = [k for k, f in enumerate(ref) if f is not None]
    if not ok:
        raise MdgateError(f"the oracle {oracle.name} failed on every frame ({'; '.join(oracle.failures[:2])})")
    used = [frames[k] for k in ok]
    _, pred = predict(candidate, [(z, x) for _, _, z, x in used])
    refs = [ref[k] for k in ok]

    def figures(sel: list[int]) -> dict[str, float]:
        m = force_accuracy(np.concatenate([pred[i] for i in sel]), np.concatenate([refs[i] for i in sel]))
        m["n_frames"] = float(len(sel))
        return m

    groups: dict[str, list[int]] = {}
    for i, (stage, mol, _, _) in enumerate(used):
        groups.setdefault(mol, []).append(i)
        groups.setdefault(f"stage:{stage}", []).append(i)
    return {"overall": figures(list(range(len(used)))), "groups": {g: figures(s) for g, s in groups.items()},
            "n_failed": len(frames) - len(ok), "failures": oracle.failures[:5]}


def run_oracle_stage(potential: Potential, frames: list[Frame], config: GateConfig,
                     model_level: str | None, parent: Potential | None = None,
                     parent_level: str | None = None) -> StageResult:
    """On-trajectory accuracy: the oracle's forces on frames of the candidate's own MD."""
    st = config.oracle
    t0 = time.perf_counter()
    oracle = make_oracle(st, parent, parent_level)
    settings = st.model_dump(mode="json", exclude={"criteria"})
    if not frames:
        return StageResult(stage=Stage.ORACLE, ran=False, required=st.required, note="no frames to judge",
                           oracle=oracle.name, settings=settings)
    res = evaluate_oracle(oracle, potential, frames)
    overall = res["overall"]
    note = f"{int(overall['n_frames'])} frames from the candidate's own NVE and stress trajectories"
    if res["n_failed"]:
        note += f"; the oracle failed on {res['n_failed']} frames ({'; '.join(res['failures'][:2])})"
    applicable = not (st.kind != OracleKind.PARENT and model_level and oracle.level_of_theory
                      and model_level.lower() != oracle.level_of_theory.lower())
    checks = [check(name, overall[key], b, required=st.required) for name, key in (
        ("min_force_r2", "force_r2"), ("force_mae_eV_per_A", "force_mae_eV_per_A"))
        if (b := enabled(st.criteria, name)) is not None]
    if not applicable:
        note = f"model trained on {model_level}, oracle computes {oracle.level_of_theory}: not comparable; " + note
        checks = [c.model_copy(update={"passed": None, "required": False, "note": "not applicable"}) for c in checks]
    per = {g: {k: v for k, v in m.items()} for g, m in res["groups"].items()}
    per["all"] = dict(overall)
    return stage_result(Stage.ORACLE, st.required, [checks], time.perf_counter() - t0, settings=settings,
                  per_molecule=per, note=note, oracle=oracle.name)
