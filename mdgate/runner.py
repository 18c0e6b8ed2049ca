"""The validation pipeline: load → sanity → MD (NVE and heat stress) → accuracy → oracle →
verdict → report.

:func:`run_pipeline` is the one pipeline: ``mdgate validate`` (:func:`validate`) and the gate flow
both call it; the flow only plugs in its own way of mapping MD over molecules (one Prefect task
per lane of molecules, :func:`split_lanes`) and of running each stage (as a Prefect task).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdgate import __version__
from mdgate.checks.evaluate import evaluate_accuracy, evaluate_trajectory, summarize_molecule
from mdgate.checks.inputs import check_cutoff
from mdgate.checks.table import Stage, live_checks
from mdgate.checks.verdict import decide, md_stage_result, stage_result
from mdgate.config import COMPILE_MIN_ATOM_STEPS, Compile, GateConfig, OracleKind
from mdgate.errors import MdgateError, ModelInterfaceError
from mdgate.md.batch import run_batch
from mdgate.md.neighbors import all_pairs
from mdgate.md.trajectory import Ramp, StopLimits, Trajectory, nve_specs, stress_specs
from mdgate.molecules import Molecule, ReferenceSet, check_reference_matches, read_molecules, read_reference
from mdgate.potentials import ModelMeta
from mdgate.potentials.predict import predict_atoms
from mdgate.potentials.schnetpack import SchnetpackPotential, find_cutoff_A, load_potential
from mdgate.results import (
    AccuracyResult,
    ModelInfo,
    MoleculeResult,
    StageResult,
    Timing,
    ValidationResult,
    Verdict,
)
from mdgate.stages.oracle import Frame, evaluate_oracle, make_oracle, pick_frames

ProgressFn = Callable[[str, int, int, bool], None]
"""``progress(molecule, step, n_steps, running)``."""


@dataclass
class Inputs:
    """What a validation runs on."""

    potential: SchnetpackPotential
    molecules: list[Molecule]
    reference: ReferenceSet | None


def configure_threads(threads: int) -> None:
    """Set torch's CPU threads deliberately (0 = keep torch's default).

    Two processes that each use every core slow each other down by orders of magnitude
    (OpenMP oversubscription): concurrent tasks should each get ``cores // tasks`` threads.
    """
    if threads > 0:
        torch.set_num_threads(threads)


def load_inputs(model: str | Path, config: GateConfig, meta: ModelMeta | None = None,
                device: str | None = None) -> Inputs:
    """Load the potential and the molecule sets, and check they fit together.

    Raises:
        MdgateError: any input problem, with a one-line reason.
    """
    configure_threads(config.md.threads)
    molecules = read_molecules(config.molecules)
    reference = None
    if config.reference is not None or config.molecules is None:
        reference = read_reference(config.reference)
        check_reference_matches(molecules, reference)
    potential = load_potential(model, meta, device or config.md.device.value)
    declared = (meta or potential.meta).cutoff_A
    check_cutoff(declared, find_cutoff_A(potential.model, potential.meta.position_unit), potential.meta.position_unit)
    check_potential(potential, molecules)
    from mdgate.potentials.unitcheck import check_force_units  # units verified before MD (an Error, not Rejected)
    check_force_units(potential, molecules, reference, potential.meta.energy_unit)
    return Inputs(potential, molecules, reference)


def check_potential(potential: SchnetpackPotential, molecules: list[Molecule]) -> None:
    """Evaluate the model once on the first molecule: outputs, shapes and elements.

    Raises:
        ModelInterfaceError: the model cannot serve as a potential for these molecules.
    """
    potential.check_elements({int(z) for m in molecules for z in m.atoms.numbers})
    atoms = molecules[0].atoms
    dev = potential.device
    numbers = torch.as_tensor(atoms.numbers, device=dev)
    sys_idx = torch.zeros(len(atoms), dtype=torch.long, device=dev)
    i, j = all_pairs(sys_idx)
    try:
        potential(numbers, torch.as_tensor(atoms.positions, device=dev), sys_idx, 1, i, j)
    except MdgateError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0][:200]
        raise ModelInterfaceError(
            f"model failed on {molecules[0].name} ({type(e).__name__}: {reason})"
        ) from e


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


def run_md(potential: SchnetpackPotential, molecules: list[Molecule], config: GateConfig,
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


def _run_specs(potential: SchnetpackPotential, specs: list, molecules: list[Molecule], config: GateConfig,
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


def run_accuracy(potential: SchnetpackPotential, reference: ReferenceSet, config: GateConfig,
                 model_level: str | None, batch_size: int = 32) -> AccuracyResult:
    """Predict the reference set in batches and compare with its energies and forces."""
    pred_e, pred_f = predict_atoms(potential, reference.frames, batch_size)
    return evaluate_accuracy(
        pred_e, reference.energies_eV(), pred_f, reference.forces_eV_per_A(),
        np.array([len(a) for a in reference.frames]), reference.names, config.criteria,
        reference.level_of_theory, model_level,
    )


def run_sanity_stage(potential: SchnetpackPotential, molecules: list[Molecule], config: GateConfig) -> StageResult:
    """The sanity stage (``mdgate.stages.sanity``) as a stage result."""
    from mdgate.stages.sanity import run_sanity

    st = config.sanity
    t0 = time.perf_counter()
    figures, checks = run_sanity(potential, molecules, st)
    return stage_result(Stage.SANITY, st.required, list(checks.values()), time.perf_counter() - t0,
                  settings=st.model_dump(mode="json", exclude={"criteria"}), per_molecule=figures,
                  by_molecule=checks)


def run_oracle_stage(potential: SchnetpackPotential, frames: list[Frame], config: GateConfig,
                     model_level: str | None, parent: SchnetpackPotential | None = None,
                     parent_level: str | None = None) -> StageResult:
    """On-trajectory accuracy: the oracle's forces on frames of the candidate's own MD."""
    from mdgate.checks.evaluate import check, enabled

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


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.3e}"


def model_info(source: str, potential: SchnetpackPotential | None, meta: ModelMeta) -> ModelInfo:
    """Facts about the model for the report."""
    n = potential.n_parameters if potential else None
    ratio = meta.parent_n_parameters / n if (n and meta.parent_n_parameters) else None
    return ModelInfo(
        source=source, n_parameters=n, parent=meta.parent, parent_n_parameters=meta.parent_n_parameters,
        compression_ratio=ratio, cutoff_A=potential.cutoff_A if potential else meta.cutoff_A,
        energy_unit=meta.energy_unit, position_unit=meta.position_unit, energy_key=meta.energy_key,
        forces_key=meta.forces_key, level_of_theory=meta.level_of_theory,
    )


def assemble(model: ModelInfo, config: GateConfig, molecules: list[MoleculeResult],
             accuracy: AccuracyResult | None, timing: Timing,
             stages: dict[str, StageResult] | None = None) -> ValidationResult:
    """Decide the verdict and build the result."""
    measured = ValidationResult(
        verdict=Verdict.ERROR, reason="not decided", model=model,
        criteria={"config": config.model_dump(mode="json"), "sha256": config.sha256()},
        molecules=molecules, accuracy=accuracy, stages=stages or {},
        timing=timing, created_at=datetime.now(UTC).isoformat(timespec="seconds"), mdgate_version=__version__,
    )
    return decide(measured)


def error_result(reason: str, source: str, config: GateConfig, meta: ModelMeta | None = None) -> ValidationResult:
    """The result of a validation that could not be done (verdict Error)."""
    return ValidationResult(
        verdict=Verdict.ERROR, reason=reason, model=model_info(source, None, meta or ModelMeta()),
        criteria={"config": config.model_dump(mode="json"), "sha256": config.sha256()},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), mdgate_version=__version__,
    )


StageFn = Callable[[str, Callable[[], Any]], Any]
"""``run_stage(name, fn)``: how a pipeline stage is run (directly, or as a Prefect task)."""
MapMD = Callable[[list[Molecule]], list[MoleculeRun]]
"""How MD is mapped over molecules (all in one batch, or one task per lane of molecules)."""


def _direct(name: str, fn: Callable[[], Any]) -> Any:
    return fn()


def run_pipeline(inputs: Inputs, config: GateConfig, meta: ModelMeta, source: str, *,
                 map_md: MapMD | None = None, run_stage: StageFn | None = None,
                 progress: ProgressFn | None = None, parent: SchnetpackPotential | None = None,
                 parent_level: str | None = None) -> ValidationResult:
    """The validation protocol on loaded inputs: sanity → MD stages → accuracy → oracle → verdict.

    A required sanity stage that fails rejects the model without running MD.

    Args:
        inputs: the loaded potential and molecule sets.
        config: the gate config.
        meta: the model's metadata.
        source: what the report calls the model.
        map_md: runs the MD stages of a list of molecules (default: all in one batch here).
        run_stage: runs a non-MD stage (default: directly).
        progress: MD progress callback for the default ``map_md``.
        parent: the parent model, for ``oracle.kind: parent``.
        parent_level: the parent's level of theory.

    Raises:
        MdgateError: bad input (the caller turns it into an Error verdict or exit code 2).
    """
    stage = run_stage or _direct
    pot = inputs.potential
    t0 = time.perf_counter()
    stages: dict[str, StageResult] = {}
    timing = Timing(device=str(pot.device))
    if config.sanity.enabled:
        stages[Stage.SANITY] = stage("sanity", lambda: run_sanity_stage(pot, inputs.molecules, config))
        timing.sanity_s = stages[Stage.SANITY].seconds
    sanity_failed = stages.get(Stage.SANITY) is not None and stages[Stage.SANITY].passed is False \
        and config.sanity.required
    runs: list[MoleculeRun] = []
    t_md = time.perf_counter()
    if not sanity_failed:
        runs = (map_md or (lambda mols: run_md(pot, mols, config, progress)))(inputs.molecules)
    timing.md_s = time.perf_counter() - t_md
    molecules = [r.nve for r in runs if r.nve is not None]
    skipped = "skipped: the model failed the required sanity checks" if sanity_failed else "disabled"
    stages[Stage.NVE] = md_stage_result(Stage.NVE, molecules, True, config.md.enabled and not sanity_failed,
                                  timing.md_s, config.md.model_dump(mode="json"), skipped)
    stress = [r.stress for r in runs if r.stress is not None]
    stages[Stage.STRESS] = md_stage_result(Stage.STRESS, stress, config.stress.required,
                                     config.stress.enabled and not sanity_failed, 0.0,
                                     config.stress.model_dump(mode="json", exclude={"criteria"}), skipped)
    accuracy = None
    t_acc = time.perf_counter()
    if (reference := inputs.reference) is not None:
        accuracy = stage("accuracy", lambda: run_accuracy(pot, reference, config, meta.level_of_theory))
        stages[Stage.ACCURACY] = StageResult(stage=Stage.ACCURACY, ran=True, required=True, checks=accuracy.checks,
                                             passed=all(c.passed is not False for c in accuracy.checks if c.required))
    timing.accuracy_s = time.perf_counter() - t_acc
    frames = [f for r in runs for f in r.frames]
    if config.oracle.enabled and not sanity_failed:
        stages[Stage.ORACLE] = stage("oracle", lambda: run_oracle_stage(
            pot, frames, config, meta.level_of_theory, parent, parent_level))
        timing.oracle_s = stages[Stage.ORACLE].seconds
    steps = max((r.steps_done for m in molecules + stress for r in m.replicas), default=0)
    atom_steps = sum(r.steps_done * m.n_atoms for m in molecules + stress for r in m.replicas)
    timing.total_s = time.perf_counter() - t0
    timing.md_steps = steps
    timing.ms_per_step = timing.md_s / steps * 1000 if steps else None
    timing.atom_steps_per_s = atom_steps / timing.md_s if timing.md_s > 0 and atom_steps else None
    timing.model_call = getattr(pot, "model_call", "eager")
    return stage("verdict", lambda: assemble(model_info(source, pot, meta), config, molecules, accuracy, timing,
                                             stages))


def validate(model: str | Path, config: GateConfig, meta: ModelMeta | None = None,
             out_dir: str | Path | None = None, device: str | None = None,
             progress: ProgressFn | None = None) -> ValidationResult:
    """Validate a model file end to end and, with ``out_dir``, write the report there.

    Raises:
        MdgateError: bad input (the caller turns it into an Error verdict or exit code 2).
    """
    from mdgate.report.markdown import write_report

    meta = meta or ModelMeta()
    t0 = time.perf_counter()
    inputs = load_inputs(model, config, meta, device)
    parent = parent_level = None
    if config.oracle.enabled and config.oracle.kind == OracleKind.PARENT and config.oracle.parent_model:
        parent = load_potential(config.oracle.parent_model, ModelMeta(), device or config.md.device.value)
    result = run_pipeline(inputs, config, meta, str(model), progress=progress, parent=parent,
                          parent_level=parent_level)
    result.timing.total_s = time.perf_counter() - t0
    if out_dir is not None:
        write_report(result, Path(out_dir))
    return result


def default_threads() -> int:
    """All cores for a single process."""
    return os.cpu_count() or 1
