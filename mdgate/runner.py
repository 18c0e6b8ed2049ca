"""The validation pipeline: load → MD → checks → accuracy → verdict → report.

Each step is a function of its own so that the gate flow can run them as separate tasks
(one MD task per molecule); :func:`validate` chains them for ``mdgate validate``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mdgate import __version__
from mdgate.checks import evaluate_accuracy, evaluate_trajectory, summarize_molecule
from mdgate.config import COMPILE_MIN_ATOM_STEPS, Compile, GateConfig
from mdgate.errors import MdgateError, ModelInterfaceError
from mdgate.md import StopLimits, run_nve
from mdgate.molecules import Molecule, ReferenceSet, check_reference_matches, read_molecules, read_reference
from mdgate.neighbors import all_pairs
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import SchnetpackPotential, load_potential
from mdgate.results import (
    AccuracyResult,
    ModelInfo,
    MoleculeResult,
    Timing,
    ValidationResult,
    Verdict,
)

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
    check_potential(potential, molecules)
    from mdgate.unitcheck import check_force_units  # units verified before MD (an Error, not Rejected)
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


def md_limits(config: GateConfig) -> StopLimits:
    """Live stop limits from the required criteria (fail-fast), or none when it is off."""
    c, md = config.criteria, config.md
    if not md.fail_fast:
        return StopLimits()

    def req(b: object, scale: float = 1.0) -> float | None:
        return b.bound * scale if b.required and b.bound is not None else None  # type: ignore[attr-defined]

    return StopLimits(
        max_force_eV_per_A=req(c.max_force_eV_per_A),
        max_temperature_K=req(c.max_temperature_K),
        max_bond_deviation_A=req(c.max_bond_deviation_A),
        max_energy_deviation_meV_per_atom=req(c.max_energy_deviation_meV_per_atom, md.fail_fast_margin),
    )


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


def run_md(potential: SchnetpackPotential, molecules: list[Molecule], config: GateConfig,
           progress: ProgressFn | None = None) -> list[MoleculeResult]:
    """Run NVE MD for ``molecules`` (all replicas in one batch) and apply the MD checks.

    A model that raises during MD is an input error (:class:`ModelInterfaceError`); a model
    that produces non-finite values fails the ``finite`` check instead.
    """
    md = config.md
    names = [m.name for m in molecules]

    def on_progress(step: int, n_steps: int, active: list[bool]) -> None:
        if progress is None:
            return
        for k, name in enumerate(names):
            running = any(active[k * md.n_replicas:(k + 1) * md.n_replicas])
            progress(name, step, n_steps, running)

    try:
        trajs = run_nve(
            potential, molecules, n_replicas=md.n_replicas, n_steps=md.n_steps,
            timestep_fs=md.timestep_fs, temperature_K=md.temperature_K, seed=md.seed,
            record_every=md.record_every, limits=md_limits(config),
            neighbor_skin_A=md.neighbor_skin_A, progress=on_progress,
            compile_at_step=compile_step(molecules, config),
        )
    except MdgateError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0][:200]
        raise ModelInterfaceError(f"model raised during MD ({type(e).__name__}: {reason})") from e
    results = []
    for k, mol in enumerate(molecules):
        reps = [evaluate_trajectory(t, config.criteria) for t in trajs[k * md.n_replicas:(k + 1) * md.n_replicas]]
        results.append(summarize_molecule(mol.name, mol.formula, reps, md.n_steps, len(mol.atoms)))
    return results


def run_accuracy(potential: SchnetpackPotential, reference: ReferenceSet, config: GateConfig,
                 model_level: str | None, batch_size: int = 32) -> AccuracyResult:
    """Predict the reference set in batches and compare with its energies and forces."""
    frames = reference.frames
    pred_e, pred_f = [], []
    dev = potential.device
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        numbers = torch.as_tensor(np.concatenate([a.numbers for a in chunk]), device=dev)
        pos = torch.as_tensor(np.concatenate([a.positions for a in chunk]), device=dev)
        sys_idx = torch.as_tensor(np.repeat(np.arange(len(chunk)), [len(a) for a in chunk]), device=dev)
        i, j = all_pairs(sys_idx)
        if potential.cutoff_A is not None:
            keep = (pos[i] - pos[j]).norm(dim=1) < potential.cutoff_A
            i, j = i[keep], j[keep]
        e, f = potential(numbers, pos, sys_idx, len(chunk), i, j)
        pred_e.append(e.cpu().numpy())
        f = f.cpu().numpy()
        offsets = np.cumsum([0] + [len(a) for a in chunk])
        pred_f += [f[offsets[k]:offsets[k + 1]] for k in range(len(chunk))]
    return evaluate_accuracy(
        np.concatenate(pred_e), reference.energies_eV(), pred_f, reference.forces_eV_per_A(),
        np.array([len(a) for a in frames]), reference.names, config.criteria,
        reference.level_of_theory, model_level,
    )


def decide(molecules: list[MoleculeResult], accuracy: AccuracyResult | None) -> tuple[Verdict, str, list[str]]:
    """Approved only when every required check passes on every molecule and replica."""
    failed: list[str] = []
    for mol in molecules:
        for c in mol.checks:
            if c.required and c.passed is False:
                n_bad = sum(1 for r in mol.replicas for rc in r.checks if rc.name == c.name and rc.passed is False)
                where = f" at {c.time_ps:.3f} ps" if c.time_ps is not None else ""
                failed.append(f"{mol.name}: {c.name} = {_fmt(c.value)} {c.unit} "
                              f"(bound {c.comparison} {_fmt(c.bound)}; {n_bad}/{len(mol.replicas)} replicas{where})")
    if accuracy is not None:
        for c in accuracy.checks:
            if c.required and c.passed is False:
                failed.append(f"accuracy: {c.name} = {_fmt(c.value)} (bound {c.comparison} {_fmt(c.bound)})")
    if failed:
        names = list(dict.fromkeys(f.split(": ")[1].split(" =")[0] for f in failed))
        reason = f"{len(failed)} required checks failed ({', '.join(names)}); first: {failed[0]}"
        return Verdict.REJECTED, reason, failed
    n = sum(len(m.replicas) for m in molecules)
    acc = f", force R² {accuracy.force_r2:.4f}" if accuracy is not None and accuracy.applicable else ""
    return Verdict.APPROVED, f"all required checks passed on {len(molecules)} molecules ({n} trajectories){acc}", failed


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
             accuracy: AccuracyResult | None, timing: Timing) -> ValidationResult:
    """Decide the verdict and build the result."""
    verdict, reason, failed = decide(molecules, accuracy)
    return ValidationResult(
        verdict=verdict, reason=reason, model=model,
        criteria={"config": config.model_dump(mode="json"), "sha256": config.sha256()},
        molecules=molecules, accuracy=accuracy, failed_checks=failed, timing=timing,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), mdgate_version=__version__,
    )


def error_result(reason: str, source: str, config: GateConfig, meta: ModelMeta | None = None) -> ValidationResult:
    """The result of a validation that could not be done (verdict Error)."""
    return ValidationResult(
        verdict=Verdict.ERROR, reason=reason, model=model_info(source, None, meta or ModelMeta()),
        criteria={"config": config.model_dump(mode="json"), "sha256": config.sha256()},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), mdgate_version=__version__,
    )


def validate(model: str | Path, config: GateConfig, meta: ModelMeta | None = None,
             out_dir: str | Path | None = None, device: str | None = None,
             progress: ProgressFn | None = None) -> ValidationResult:
    """Validate a model file end to end and, with ``out_dir``, write the report there.

    Raises:
        MdgateError: bad input (the caller turns it into an Error verdict or exit code 2).
    """
    from mdgate.report import write_report

    meta = meta or ModelMeta()
    t0 = time.perf_counter()
    inputs = load_inputs(model, config, meta, device)
    t_md = time.perf_counter()
    molecules = run_md(inputs.potential, inputs.molecules, config, progress)
    md_s = time.perf_counter() - t_md
    t_acc = time.perf_counter()
    accuracy = None
    if inputs.reference is not None:
        accuracy = run_accuracy(inputs.potential, inputs.reference, config, meta.level_of_theory)
    acc_s = time.perf_counter() - t_acc
    steps = max((r.steps_done for m in molecules for r in m.replicas), default=0)
    atom_steps = sum(r.steps_done * m.n_atoms for m in molecules for r in m.replicas)
    timing = Timing(
        total_s=time.perf_counter() - t0, md_s=md_s, accuracy_s=acc_s, device=str(inputs.potential.device),
        md_steps=steps, ms_per_step=md_s / steps * 1000 if steps else None,
        atom_steps_per_s=atom_steps / md_s if md_s > 0 else None, model_call=inputs.potential.model_call,
    )
    result = assemble(model_info(str(model), inputs.potential, meta), config, molecules, accuracy, timing)
    if out_dir is not None:
        write_report(result, Path(out_dir))
    return result


def default_threads() -> int:
    """All cores for a single process."""
    return os.cpu_count() or 1
