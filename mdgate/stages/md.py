"""The MD stages, NVE and heat stress: their trajectories advance together in one batch (one
model call per step); each molecule's replicas are evaluated against the stage's criteria.

The gate runs this per lane of molecules (:func:`split_lanes`), ``mdgate validate`` for all
molecules at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mdgate.checks.evaluate import evaluate_trajectory, summarize_molecule
from mdgate.checks.table import Stage, live_checks
from mdgate.config import COMPILE_MIN_ATOM_STEPS, Compile, GateConfig
from mdgate.errors import MdgateError, ModelInterfaceError
from mdgate.md.batch import run_batch
from mdgate.md.trajectory import Ramp, StopLimits, Trajectory, nve_specs, stress_specs
from mdgate.molecules import Molecule
from mdgate.potentials import Potential
from mdgate.results import MoleculeResult
from mdgate.stages.oracle import Frame, pick_frames

ProgressFn = Callable[[str, int, int, bool], None]
"""``progress(molecule, step, n_steps, running)``."""


def md_limits(config: GateConfig, stage: Stage = Stage.NVE) -> StopLimits:
    """Live stop limits from a stage's required criteria (fail-fast), or none when it is off.

    Every check the table marks ``stops_md`` stops a trajectory at its bound; the NVE energy
    deviation at ``fail_fast_margin`` × its bound.
    """
    md = config.md
    criteria = config.criteria if stage == Stage.NVE else config.stress.criteria
    required = True if stage == Stage.NVE else config.stress.required
    if not md.fail_fast or not required:
        return StopLimits()
    limits: dict[str, float] = {}
    for name in live_checks():
        b = getattr(criteria, name, None)
        if b is not None and b.enabled and b.required and b.bound is not None:
            limits[name] = b.bound * (md.fail_fast_margin if name == "max_energy_deviation_meV_per_atom" else 1.0)
    return StopLimits(**limits)


#: With ``compile: auto`` the model is compiled after this many steps, if any trajectory still
#: runs: a model that fails fast is rejected without paying for compilation.
COMPILE_AFTER_STEPS = 200


def compile_step(molecules: list[Molecule], config: GateConfig) -> int | None:
    """The MD step at which to compile the model (``md.compile``), or ``None`` for never."""
    md = config.md
    work = md.n_steps * md.n_replicas * sum(len(m.atoms) for m in molecules)
    if md.compile == Compile.ON:
        return 1
    if md.compile == Compile.AUTO and work >= COMPILE_MIN_ATOM_STEPS and md.n_steps > COMPILE_AFTER_STEPS:
        return COMPILE_AFTER_STEPS
    return None


@dataclass
class MoleculeRun:
    """The MD stages of one molecule: NVE and stress results, and frames for the oracle."""

    nve: MoleculeResult | None
    stress: MoleculeResult | None
    frames: list[Frame] = field(default_factory=list)


#: Snapshots kept per trajectory for the oracle to choose from.
SNAPSHOTS_PER_TRAJECTORY = 10


def _frame_every(n_steps: int, record_every: int, config: GateConfig) -> int:
    if not config.oracle.enabled:
        return 0
    return record_every * max(1, n_steps // (SNAPSHOTS_PER_TRAJECTORY * record_every))


def run_md(potential: Potential, molecules: list[Molecule], config: GateConfig,
           progress: ProgressFn | None = None) -> list[MoleculeRun]:
    """Run the MD stages (NVE, heat stress) for ``molecules`` and apply their checks.

    Both stages advance in one batch (one model call per step) when their time steps agree;
    every replica of every molecule is batched too. A model that raises during MD is an input
    error (:class:`ModelInterfaceError`); a model that produces non-finite values fails the
    ``finite`` check instead.
    """
    md, st = config.md, config.stress
    n_st = st.n_replicas or md.n_replicas
    specs = []
    if md.enabled:
        specs += nve_specs(molecules, n_replicas=md.n_replicas, n_steps=md.n_steps, temperature_K=md.temperature_K,
                           seed=md.seed, limits=md_limits(config),
                           frame_every=_frame_every(md.n_steps, md.record_every, config))
    if st.enabled:
        ramp = Ramp(st.start_temperature_K, st.end_temperature_K, st.ramp_steps, st.friction_per_ps)
        specs += stress_specs(molecules, n_replicas=n_st, ramp=ramp, n_steps=st.n_steps, seed=st.seed,
                              limits=md_limits(config, Stage.STRESS),
                              frame_every=_frame_every(st.n_steps, md.record_every, config))
    if not specs:
        return [MoleculeRun(None, None) for _ in molecules]
    trajs = _run_specs(potential, specs, molecules, config, progress)
    runs = []
    for mol in molecules:
        mine = [t for t in trajs if t.molecule == mol.name]
        nve = [t for t in mine if t.stage == "nve"]
        stress = [t for t in mine if t.stage == "stress"]
        frames = [(t.stage, mol.name, mol.atoms.numbers, x) for t in mine
                  for _, x in pick_frames(t.frames, config.oracle.frames_per_trajectory)]
        runs.append(MoleculeRun(
            _summarize(mol, nve, config.criteria, True, md.n_steps, "nve") if nve else None,
            _summarize(mol, stress, st.criteria, st.required, st.n_steps, "stress") if stress else None,
            frames))
    return runs


def split_lanes(molecules: list[Molecule], n_lanes: int) -> list[list[Molecule]]:
    """Split ``molecules`` into at most ``n_lanes`` batches of about equal work, for lanes that
    run side by side (each one :func:`run_md` call, one model call per step for all its molecules).

    Work is counted in atoms (the cost of a step grows with them). Largest first, each molecule
    goes to the lane with the fewest atoms so far (ties: the lower lane); within a lane the
    molecules keep their order in ``molecules``. Deterministic: the same set and lane count give
    the same batches, hence the same numbers, whichever runner runs them.
    """
    n = max(1, min(n_lanes, len(molecules)))
    lanes: list[list[int]] = [[] for _ in range(n)]
    atoms = [0] * n
    order = sorted(range(len(molecules)), key=lambda i: (-len(molecules[i].atoms), i))
    for i in order:
        k = min(range(n), key=lambda j: (atoms[j], j))
        lanes[k].append(i)
        atoms[k] += len(molecules[i].atoms)
    return [[molecules[i] for i in sorted(lane)] for lane in lanes if lane]


def _summarize(mol: Molecule, trajs: list[Trajectory], criteria: Any, required: bool, n_steps: int,
               stage: str) -> MoleculeResult:
    reps = [evaluate_trajectory(t, criteria, required) for t in trajs]
    return summarize_molecule(mol.name, mol.formula, reps, n_steps, len(mol.atoms), stage)


def _run_specs(potential: Potential, specs: list, molecules: list[Molecule], config: GateConfig,
               progress: ProgressFn | None) -> list[Trajectory]:
    md = config.md
    names = [sp.molecule.name for sp in specs]

    def on_progress(step: int, n_steps: int, active: list[bool]) -> None:
        if progress is None:
            return
        for name in dict.fromkeys(names):
            progress(name, step, n_steps, any(a for a, n in zip(active, names, strict=True) if n == name))

    same_dt = abs(config.stress.timestep_fs - md.timestep_fs) < 1e-12
    groups = [specs] if same_dt else [[s for s in specs if s.ramp is None], [s for s in specs if s.ramp is not None]]
    trajs: list[Trajectory] = []
    try:
        for group in [g for g in groups if g]:
            dt = md.timestep_fs if group[0].ramp is None else config.stress.timestep_fs
            trajs += run_batch(potential, group, timestep_fs=dt, record_every=md.record_every,
                               neighbor_skin_A=md.neighbor_skin_A, progress=on_progress,
                               compile_at_step=compile_step(molecules, config))
    except MdgateError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0][:200]
        raise ModelInterfaceError(f"model raised during MD ({type(e).__name__}: {reason})") from e
    return trajs
