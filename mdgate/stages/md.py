"""The MD stages, NVE and heat stress: their trajectories advance together in one batch (one
model call per step); each molecule's replicas are evaluated against the stage's criteria.

The gate runs this per lane of molecules (:func:`split_lanes`), ``mdgate validate`` for all
molecules at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mdgate.checks.evaluate import evaluate_trajectory, failure_rate, summarize_molecule
from mdgate.checks.rates import RateDecision, more_replicas
from mdgate.checks.table import Stage, live_checks
from mdgate.config import COMPILE_MIN_ATOM_STEPS, Compile, GateConfig
from mdgate.errors import MdgateError, ModelInterfaceError
from mdgate.md.batch import run_batch
from mdgate.md.trajectory import (
    Ramp,
    StopLimits,
    Trajectory,
    TrajectorySpec,
    hold_records,
    nve_specs,
    stress_specs,
)
from mdgate.molecules import Molecule
from mdgate.potentials import Potential
from mdgate.results import MoleculeResult, ReplicaResult
from mdgate.stages.oracle import Frame, pick_frames

ProgressFn = Callable[[str, int, int, bool], None]
"""``progress(molecule, step, n_steps, running)``."""


def md_limits(config: GateConfig, stage: Stage = Stage.NVE) -> StopLimits:
    """Live stop limits from a stage's required criteria (fail-fast), or none when it is off.

    Every check the table marks ``stops_md`` stops a trajectory at its bound; the NVE energy
    deviation at ``fail_fast_margin`` × its bound.
    """
    md = config.md
    criteria, required, _ = _stage_rule(stage, config)
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
    every replica of every molecule is batched too. With ``rates`` on, a molecule whose failure
    rate is undecided gets ``batch_replicas`` more trajectories (all such molecules in one batch)
    until it is decided or at ``max_replicas``; once a molecule fails a required stage, no more
    confirmation runs (the verdict is settled). A model that raises during MD is an input error
    (:class:`ModelInterfaceError`); a model that produces non-finite values fails the ``finite``
    check instead.
    """
    md, st = config.md, config.stress
    first = {Stage.NVE: md.n_replicas, Stage.STRESS: st.n_replicas or md.n_replicas}
    stages = [s for s, on in ((Stage.NVE, md.enabled), (Stage.STRESS, st.enabled)) if on]
    specs = [sp for stage in stages for sp in _stage_specs(stage, molecules, first[stage], 0, config)]
    if not specs:
        return [MoleculeRun(None, None) for _ in molecules]
    trajs = _run_specs(potential, specs, molecules, config, progress)
    notes: dict[tuple[str, str], str] = {}
    evaluated: dict[int, ReplicaResult] = {}
    while config.rates.enabled:
        more, notes = _confirmations(trajs, molecules, config, evaluated)
        if not more:
            break
        trajs += _run_specs(potential, more, molecules, config, progress)
    runs = []
    for mol in molecules:
        mine = [t for t in trajs if t.molecule == mol.name]
        frames = [(t.stage, mol.name, mol.atoms.numbers, x) for t in mine
                  for _, x in pick_frames(t.frames, config.oracle.frames_per_trajectory)]
        nve, stress = ([t for t in mine if t.stage == stage] for stage in (Stage.NVE, Stage.STRESS))
        runs.append(MoleculeRun(
            _summarize(mol, nve, Stage.NVE, config, first[Stage.NVE], notes, evaluated) if nve else None,
            _summarize(mol, stress, Stage.STRESS, config, first[Stage.STRESS], notes, evaluated) if stress else None,
            frames))
    return runs


def _stage_specs(stage: Stage, molecules: list[Molecule], n: int, first_replica: int,
                 config: GateConfig) -> list[TrajectorySpec]:
    """``n`` trajectories of ``stage`` per molecule, replicas from ``first_replica`` on."""
    md, st = config.md, config.stress
    if stage == Stage.NVE:
        return nve_specs(molecules, n_replicas=n, n_steps=md.n_steps, temperature_K=md.temperature_K, seed=md.seed,
                         limits=md_limits(config), frame_every=_frame_every(md.n_steps, md.record_every, config),
                         first_replica=first_replica,
                         hold=hold_records(md.hold_fs, md.timestep_fs, md.record_every))
    ramp = Ramp(st.start_temperature_K, st.end_temperature_K, st.ramp_steps, st.friction_per_ps)
    return stress_specs(molecules, n_replicas=n, ramp=ramp, n_steps=st.n_steps, seed=st.seed,
                        limits=md_limits(config, Stage.STRESS),
                        frame_every=_frame_every(st.n_steps, md.record_every, config), first_replica=first_replica,
                        hold=hold_records(st.hold_fs, st.timestep_fs, md.record_every))


def _stage_rule(stage: Stage, config: GateConfig) -> tuple[Any, bool, int]:
    """A stage's criteria, whether it is required, and its steps per trajectory."""
    if stage == Stage.NVE:
        return config.criteria, True, config.md.n_steps
    return config.stress.criteria, config.stress.required, config.stress.n_steps


def _evaluate(trajs: list[Trajectory], stage: Stage, config: GateConfig,
              evaluated: dict[int, ReplicaResult]) -> list[ReplicaResult]:
    """Each trajectory of ``stage`` against the stage's criteria, evaluated once (``evaluated``
    keeps the results by trajectory for the confirmation rounds and the summary).
    """
    criteria, required, _ = _stage_rule(stage, config)
    for t in trajs:
        if id(t) not in evaluated:
            evaluated[id(t)] = evaluate_trajectory(t, criteria, required)
    return [evaluated[id(t)] for t in trajs]


def _confirmations(trajs: list[Trajectory], molecules: list[Molecule], config: GateConfig,
                   evaluated: dict[int, ReplicaResult]) -> tuple[list[TrajectorySpec], dict[tuple[str, str], str]]:
    """The next round of confirmation trajectories (none once a molecule fails), and a note per
    (stage, molecule) left undecided.
    """
    undecided: list[tuple[Stage, Molecule, int]] = []
    failed: list[str] = []
    for stage in (Stage.NVE, Stage.STRESS):
        for mol in molecules:
            mine = [t for t in trajs if t.molecule == mol.name and t.stage == stage]
            if not mine:
                continue
            rate = failure_rate(_evaluate(mine, stage, config, evaluated), config.rates)
            if rate.decision == RateDecision.FAIL:
                failed.append(f"{stage}/{mol.name}")
            elif rate.decision == RateDecision.UNDECIDED:
                undecided.append((stage, mol, len(mine)))
    cap = config.rates.max_replicas
    if failed:
        why = f"not confirmed: {failed[0]} already fails"
        return [], {(str(st), m.name): why for st, m, _ in undecided}
    more = [sp for st, m, n in undecided if (k := more_replicas(n, config.rates))
            for sp in _stage_specs(st, [m], k, n, config)]
    return more, {(str(st), m.name): f"undecided at the cap of {cap} trajectories" for st, m, _ in undecided}


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


def _summarize(mol: Molecule, trajs: list[Trajectory], stage: Stage, config: GateConfig, first: int,
               notes: dict[tuple[str, str], str], evaluated: dict[int, ReplicaResult]) -> MoleculeResult:
    _, _, n_steps = _stage_rule(stage, config)
    reps = _evaluate(sorted(trajs, key=lambda t: t.replica), stage, config, evaluated)
    res = summarize_molecule(mol.name, mol.formula, reps, n_steps, len(mol.atoms), str(stage),
                             config.rates, max(0, len(trajs) - first))
    if res.rate is not None and res.rate.decision == RateDecision.UNDECIDED:
        res.rate.note = notes.get((str(stage), mol.name), "")
    return res


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
