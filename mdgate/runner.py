"""The validation pipeline: load → sanity → energy landscape (pes) → MD (NVE and heat stress) →
accuracy → oracle → verdict → report.

:func:`run_pipeline` is the one pipeline: ``mdgate validate`` (:func:`validate`) and the gate flow
both call it; the flow only plugs in its own way of mapping MD over molecules (one Prefect task
per lane of molecules, :func:`mdgate.stages.md.split_lanes`) and of running each stage (as a
Prefect task). The stages themselves are in :mod:`mdgate.stages`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from mdgate import __version__
from mdgate.checks.inputs import check_cutoff
from mdgate.checks.table import Stage
from mdgate.checks.verdict import decide, md_stage_result
from mdgate.config import GateConfig, OracleKind
from mdgate.errors import MdgateError, ModelInterfaceError
from mdgate.md.neighbors import all_pairs
from mdgate.molecules import Molecule, ReferenceSet, check_reference_matches, read_molecules, read_reference
from mdgate.potentials import LoadedPotential, ModelMeta, Potential, load
from mdgate.potentials.isolation import Isolation
from mdgate.potentials.loading import check_coverage, model_cutoff_A
from mdgate.report.markdown import write_report
from mdgate.results import (
    AccuracyResult,
    ModelInfo,
    MoleculeResult,
    StageResult,
    Timing,
    ValidationResult,
    Verdict,
)
from mdgate.stages.accuracy import run_accuracy
from mdgate.stages.md import MoleculeRun, ProgressFn, run_md
from mdgate.stages.oracle import run_oracle_stage
from mdgate.stages.pes import run_pes_stage
from mdgate.stages.sanity import run_sanity_stage


@dataclass
class Inputs:
    """What a validation runs on."""

    potential: LoadedPotential
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
                device: str | None = None, isolation: Isolation | None = None,
                probes: list[str] | None = None) -> Inputs:
    """Load the potential and the molecule sets, and check they fit together.

    ``isolation`` and ``probes``: the trust policy and the folders a model process must not write
    (:func:`mdgate.potentials.load`).

    Raises:
        MdgateError: any input problem, with a one-line reason.
    """
    configure_threads(config.md.threads)
    molecules = read_molecules(config.molecules)
    reference = None
    if config.reference is not None or config.molecules is None:
        reference = read_reference(config.reference)
        check_reference_matches(molecules, reference)
    potential = load(model, device or config.md.device.value, meta, isolation, probes)
    declared = (meta or potential.meta).cutoff_A
    # An adapter that finds its own neighbours (an ASE calculator) needs no cutoff from the engine.
    check_cutoff(declared, model_cutoff_A(potential), potential.meta.position_unit,
                 required=getattr(potential, "uses_pairs", True))
    check_potential(potential, molecules)
    from mdgate.potentials.unitcheck import check_force_units  # units verified before MD (an Error, not Rejected)
    check_force_units(potential, molecules, reference, potential.meta.energy_unit)
    return Inputs(potential, molecules, reference)


def check_potential(potential: LoadedPotential, molecules: list[Molecule]) -> None:
    """Evaluate the model once on the first molecule: outputs, shapes and elements.

    Raises:
        ModelInterfaceError: the model cannot serve as a potential for these molecules.
    """
    check_coverage(potential, molecules)
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


def model_info(source: str, potential: LoadedPotential | None, meta: ModelMeta) -> ModelInfo:
    """Facts about the model for the report."""
    n = potential.n_parameters if potential else None
    ratio = meta.parent_n_parameters / n if (n and meta.parent_n_parameters) else None
    return ModelInfo(
        source=source, n_parameters=n, parent=meta.parent, parent_n_parameters=meta.parent_n_parameters,
        compression_ratio=ratio, cutoff_A=potential.cutoff_A if potential else meta.cutoff_A,
        energy_unit=meta.energy_unit, position_unit=meta.position_unit, energy_key=meta.energy_key,
        forces_key=meta.forces_key, level_of_theory=meta.level_of_theory, runs_in=runs_in(potential),
    )


def runs_in(potential: LoadedPotential | None) -> str | None:
    """Where the model's code ran, in words (``None``: not loaded)."""
    if potential is None:
        return None
    sandbox = getattr(potential, "sandbox", None)
    return sandbox if isinstance(sandbox, str) else "in the engine's process"


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
                 progress: ProgressFn | None = None, parent: Potential | None = None,
                 parent_level: str | None = None) -> ValidationResult:
    """The validation protocol on loaded inputs: sanity → pes → MD stages → accuracy → oracle → verdict.

    A required sanity stage that fails rejects the model without running the pes stage or MD (a
    broken model); a failing pes stage does not stop MD (its verdict is Rejected either way, and
    the report shows how the model behaves in MD too).

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
    meta = getattr(pot, "meta", None) or meta  # ``meta`` with what the descriptor declares
    t0 = time.perf_counter()
    stages: dict[str, StageResult] = {}
    timing = Timing(device=str(pot.device))
    if config.sanity.enabled:
        stages[Stage.SANITY] = stage("sanity", lambda: run_sanity_stage(pot, inputs.molecules, config))
        timing.sanity_s = stages[Stage.SANITY].seconds
    sanity_failed = stages.get(Stage.SANITY) is not None and stages[Stage.SANITY].passed is False \
        and config.sanity.required
    if config.pes.enabled and not sanity_failed:
        stages[Stage.PES] = stage("pes", lambda: run_pes_stage(pot, inputs.molecules, config, meta.level_of_theory,
                                                               parent, parent_level))
        timing.pes_s = stages[Stage.PES].seconds
    t_md = time.perf_counter()
    runs = [] if sanity_failed else (map_md or (lambda mols: run_md(pot, mols, config, progress)))(inputs.molecules)
    timing.md_s = time.perf_counter() - t_md
    molecules = [r.nve for r in runs if r.nve is not None]
    stages.update(_md_stages(runs, config, timing.md_s, sanity_failed))
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
    _md_throughput(timing, molecules + stages[Stage.STRESS].molecules, getattr(pot, "model_call", "eager"))
    timing.total_s = time.perf_counter() - t0
    return stage("verdict", lambda: assemble(model_info(source, pot, meta), config, molecules, accuracy, timing,
                                             stages))


def _md_stages(runs: list[MoleculeRun], config: GateConfig, md_s: float,
               sanity_failed: bool) -> dict[str, StageResult]:
    """The NVE and stress stage results of the MD runs (or why they did not run)."""
    skipped = "skipped: the model failed the required sanity checks" if sanity_failed else "disabled"
    nve = [r.nve for r in runs if r.nve is not None]
    stress = [r.stress for r in runs if r.stress is not None]
    return {Stage.NVE: md_stage_result(Stage.NVE, nve, True, config.md.enabled and not sanity_failed, md_s,
                                       config.md.model_dump(mode="json"), skipped),
            Stage.STRESS: md_stage_result(Stage.STRESS, stress, config.stress.required,
                                          config.stress.enabled and not sanity_failed, 0.0,
                                          config.stress.model_dump(mode="json", exclude={"criteria"}), skipped)}


def _md_throughput(timing: Timing, molecules: list[MoleculeResult], model_call: str) -> None:
    """MD steps, ms per step and atom-steps per second of the MD stages, into ``timing``."""
    steps = max((r.steps_done for m in molecules for r in m.replicas), default=0)
    atom_steps = sum(r.steps_done * m.n_atoms for m in molecules for r in m.replicas)
    timing.md_steps = steps
    timing.ms_per_step = timing.md_s / steps * 1000 if steps else None
    timing.atom_steps_per_s = atom_steps / timing.md_s if timing.md_s > 0 and atom_steps else None
    timing.model_call = model_call


def validate(model: str | Path, config: GateConfig, meta: ModelMeta | None = None,
             out_dir: str | Path | None = None, device: str | None = None,
             progress: ProgressFn | None = None, isolation: Isolation | None = None) -> ValidationResult:
    """Validate a model file end to end and, with ``out_dir``, write the report there.

    ``isolation``: the trust policy for the model and the parent oracle (``None``: in-process).

    Raises:
        MdgateError: bad input (the caller turns it into an Error verdict or exit code 2).
    """
    meta = meta or ModelMeta()
    t0 = time.perf_counter()
    probes = []
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        probes.append(str(Path(out_dir).resolve()))
    inputs = load_inputs(model, config, meta, device, isolation, probes)
    parent = parent_level = None
    if config.oracle.enabled and config.oracle.kind == OracleKind.PARENT and config.oracle.parent_model:
        parent = load(config.oracle.parent_model, device or config.md.device.value, isolation=isolation,
                      probes=probes)
        parent_level = parent.meta.level_of_theory
    try:
        result = run_pipeline(inputs, config, inputs.potential.meta, str(model), progress=progress, parent=parent,
                              parent_level=parent_level)
    finally:
        close(inputs.potential, parent)
    result.timing.total_s = time.perf_counter() - t0
    if out_dir is not None:
        write_report(result, Path(out_dir))
    return result


def close(*potentials: object) -> None:
    """Stop the model processes of these potentials (a potential without one is left as it is)."""
    for potential in potentials:
        stop = getattr(potential, "close", None)
        if callable(stop):
            stop()


def default_threads() -> int:
    """All cores for a single process."""
    return os.cpu_count() or 1
