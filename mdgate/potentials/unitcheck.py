"""Unit sanity before MD: the user declares the model's units, the gate verifies them.

A model whose energy unit is declared wrongly (the classic: trained in kcal/mol, as schnetpack's
MD17 experiments are, and validated as eV) runs, explodes in MD and is Rejected for the wrong
reason. :func:`check_force_units` catches this before MD and raises :class:`UnitMismatchError`
(an Error verdict, exit code 2) naming the unit to declare. It never changes a unit by itself.

**With a reference set** (the rule). The model is evaluated, in one batched call, on a few
reference frames (``max_frames``: two per molecule, molecules of the validation set first), with
the forces converted to eV/Å using the *declared* units. The least-squares scale

    s = <F_model, F_ref> / <F_ref, F_ref>

says by which factor the forces are off. Each unit of :data:`mdgate.units.FORCE_UNIT_CANDIDATES`
other than the declared one gives a ratio ``r`` = (declared force unit in eV/Å) / (candidate force
unit in eV/Å): the factor the forces would be off by if the model were in that unit (23.06 for a
model in kcal/mol declared as eV; 1/23.06 for a model in eV declared as kcal/mol). With the
relative force error ``err(r) = |F_model / r - F_ref| / |F_ref|``, the check raises when, for the
candidate ``r`` nearest to ``s``:

- ``s`` is within :data:`SCALE_TOLERANCE` (25 %) of ``r`` (known ratios are at least 1.9× apart,
  so at most one candidate can match),
- the forces divided by ``r`` match the reference: ``err(r) <=`` :data:`MAX_MATCHED_ERROR` (0.6),
- and far better than as declared: ``err(1) >=`` :data:`MIN_IMPROVEMENT` (4) ``× err(r)``.

A correct model (s ≈ 1) never matches; an untrained model (s ≈ 0, forces uncorrelated with the
reference) fails the second condition. Energy differences between frames of the same molecule
give a second scale, reported alongside (it does not decide: an energy fit is weaker than a
force fit for a briefly trained model).

**Without a reference set** (a plausibility check, one-sided). At each start geometry the model
is evaluated at ±``h`` along a random unit direction in 3N space (``h`` = 0.01 Å): the force
curvature ``|F(x+hd) - F(x-hd)| / 2h = |H d|`` is bounded by the Hessian's largest eigenvalue,
about 2 × 112 eV/Å² for the stiffest bond of an organic molecule (C≡N, 18 mdyn/Å). Models in eV
measure 33-60 eV/Å² on the packaged molecules (median 51), a model in kcal/mol declared as eV
about 1200. The check raises when the median over molecules exceeds
:data:`MAX_CURVATURE_EV_PER_A2` (300 eV/Å²), and names the unit that would bring the curvature
closest to the typical 50 eV/Å². The size of the forces themselves (reported as
``median_force_eV_per_A``) does not decide: at the optimised start geometries a model in kcal/mol
declared as eV has a median |F| of only 0.9 eV/Å (its small errors, 23× enlarged), while an
untrained model can have large forces with a plausible curvature, which no unit explains (a unit
scales forces and curvature alike). Forces that are too *small* are not flagged without a
reference: an untrained model has them too (about 5 eV/Å²), and MD rejects it.

Non-finite model outputs are not judged here (the ``finite`` check rejects them in MD).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from ase import Atoms
from pydantic import BaseModel

from mdgate.errors import MdgateError, ModelInterfaceError, UnitMismatchError
from mdgate.md.neighbors import all_pairs
from mdgate.molecules import Molecule, ReferenceSet
from mdgate.potentials import Potential
from mdgate.units import FORCE_UNIT_CANDIDATES, force_factor, length_factor

#: The measured scale must be within this fraction of a known unit ratio (|ln(s/r)| <= ln 1.25).
SCALE_TOLERANCE = 0.25
#: After dividing by the matched ratio, the relative force error must be at most this.
MAX_MATCHED_ERROR = 0.6
#: ... and at least this many times smaller than the error as declared.
MIN_IMPROVEMENT = 4.0
#: Without a reference: a median force curvature above this (eV/Å²) is implausible.
MAX_CURVATURE_EV_PER_A2 = 300.0
#: The median curvature of well-trained eV models on the packaged molecules (eV/Å²).
TYPICAL_CURVATURE_EV_PER_A2 = 50.0
#: Step of the finite-difference curvature (Å, along a unit vector in 3N space).
DISPLACEMENT_A = 0.01


class UnitDiagnosis(BaseModel):
    """What the unit check measured (for the report), whether or not it raised.

    Attributes:
        method: ``reference`` (scale fitted on reference frames), ``plausibility`` (force size at
            the start geometries, no reference) or ``skipped`` (see ``note``).
        declared_energy_unit: the energy unit the check verified.
        declared_position_unit: the declared length unit.
        force_scale: least-squares scale of model vs reference forces (1 = units agree).
        energy_scale: the same for energy differences between frames of one molecule.
        matched_unit: the candidate unit whose ratio explains the scale, if the check raised.
        matched_ratio: that unit's ratio (the factor the forces are off by).
        force_error_declared: relative force error |F - F_ref| / |F_ref| as declared.
        force_error_matched: the same after dividing the forces by ``matched_ratio``
            (or by the nearest candidate's ratio when nothing matched).
        energy_error_declared: relative error of the energy differences as declared.
        n_frames: reference frames (or start geometries) evaluated.
        molecules: their molecule names.
        median_curvature_eV_per_A2: without a reference, the median |F(x+hd) - F(x-hd)| / 2h.
        median_force_eV_per_A: without a reference, the median |F| at the start geometries.
        message: the error message when the check raised, else empty.
        note: why the check was skipped or judged nothing.
    """

    method: Literal["reference", "plausibility", "skipped"]
    declared_energy_unit: str
    declared_position_unit: str = "Angstrom"
    force_scale: float | None = None
    energy_scale: float | None = None
    matched_unit: str | None = None
    matched_ratio: float | None = None
    force_error_declared: float | None = None
    force_error_matched: float | None = None
    energy_error_declared: float | None = None
    n_frames: int = 0
    molecules: list[str] = []
    median_curvature_eV_per_A2: float | None = None
    median_force_eV_per_A: float | None = None
    message: str = ""
    note: str = ""


def check_force_units(potential: Potential, molecules: list[Molecule], reference: ReferenceSet | None,
                      energy_unit: str, max_frames: int = 8) -> UnitDiagnosis:
    """Verify the declared energy unit against the model's force scale (see the module doc).

    Args:
        potential: the model, already converting its output to eV and eV/Å with the declared units.
        molecules: the validation set (its molecules' reference frames are used first; without a
            reference set, its start geometries are checked for plausibility).
        reference: reference frames with energies (eV) and forces (eV/Å), or ``None``.
        energy_unit: the declared energy unit of the model (as in ``mdgate.units``).
        max_frames: reference frames to evaluate (two per molecule).

    Returns:
        The diagnosis, when the units are plausible.

    Raises:
        UnitMismatchError: the forces are a known unit ratio off the reference, or clearly
            implausible without one; the message names the unit to declare.
        ModelInterfaceError: the model raised while being evaluated.
    """
    diagnosis = diagnose_force_units(potential, molecules, reference, energy_unit, max_frames)
    if diagnosis.message:
        raise UnitMismatchError(diagnosis.message)
    return diagnosis


def diagnose_force_units(potential: Potential, molecules: list[Molecule], reference: ReferenceSet | None,
                         energy_unit: str, max_frames: int = 8) -> UnitDiagnosis:
    """:func:`check_force_units` without raising: a mismatch is ``matched_unit`` and ``message``."""
    position_unit = str(getattr(getattr(potential, "meta", None), "position_unit", "Angstrom"))
    base = {"declared_energy_unit": energy_unit, "declared_position_unit": position_unit}
    frames, names = _pick_frames(potential, molecules, reference, max_frames) if reference else ([], [])
    if frames:
        return _diagnose_reference(potential, frames, names, base)
    usable = [m for m in molecules if _handles(potential, m.atoms)]
    if usable:
        return _diagnose_plausibility(potential, usable, base)
    return UnitDiagnosis(method="skipped", declared_energy_unit=energy_unit, declared_position_unit=position_unit,
                         note="no molecule or reference frame the model can evaluate")


# ------------------------------------------------------------------------------- with a reference


def _ratios(energy_unit: str, position_unit: str) -> list[tuple[str, str, str, float]]:
    """(name, energy unit, length unit, ratio) for every candidate other than the declared unit."""
    declared = force_factor(energy_unit, position_unit)
    out = []
    for name, e_unit, l_unit in FORCE_UNIT_CANDIDATES:
        ratio = declared / force_factor(e_unit, l_unit)
        if abs(math.log(ratio)) > 1e-6:
            out.append((name, e_unit, l_unit, ratio))
    return out


def _diagnose_reference(potential: Potential, frames: list[Atoms], names: list[str], base: dict) -> UnitDiagnosis:
    energies, forces = _evaluate(potential, frames)
    mols = list(dict.fromkeys(names))
    diag = UnitDiagnosis(method="reference", **base, n_frames=len(frames), molecules=mols)
    pred = np.concatenate(forces).ravel()
    ref = np.concatenate([a.get_forces() for a in frames]).ravel()
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(energies))):
        diag.note = "the model's outputs are not finite: not judged here (the finite check rejects them)"
        return diag
    ref_norm = float(np.linalg.norm(ref))
    if ref_norm == 0.0:
        diag.note = "the reference forces are all zero: no scale to measure"
        return diag
    scale = float(pred @ ref) / ref_norm**2
    diag.force_scale = scale
    diag.force_error_declared = float(np.linalg.norm(pred - ref)) / ref_norm
    diag.energy_scale, diag.energy_error_declared = _energy_scale(energies, frames, names)
    if scale <= 0:
        return diag
    name, e_unit, l_unit, ratio = min(_ratios(base["declared_energy_unit"], base["declared_position_unit"]),
                                      key=lambda c: abs(math.log(scale / c[3])))
    diag.force_error_matched = float(np.linalg.norm(pred / ratio - ref)) / ref_norm
    if (abs(math.log(scale / ratio)) <= math.log(1.0 + SCALE_TOLERANCE)
            and diag.force_error_matched <= MAX_MATCHED_ERROR
            and diag.force_error_declared >= MIN_IMPROVEMENT * diag.force_error_matched):
        diag.matched_unit, diag.matched_ratio = name, ratio
        energy = (f", energy differences {_times(diag.energy_scale)}" if diag.energy_scale is not None else "")
        diag.message = (
            f"forces are {_times(scale)} the reference{energy} (1 {_label(base)} = {ratio:.4g} {name}; "
            f"{len(frames)} frames of {len(mols)} molecules, force error {diag.force_error_declared:.3g} as "
            f"declared, {diag.force_error_matched:.3g} in {name}): {_looks_like(name, e_unit)}, "
            f"not the declared {_label(base)}; {_advice(e_unit, l_unit, base)}"
        )
    return diag


def _energy_scale(energies: np.ndarray, frames: list[Atoms], names: list[str]) -> tuple[float | None, float | None]:
    """Least-squares scale and relative error of energy differences within each molecule."""
    ref_e = np.array([a.get_potential_energy() for a in frames])
    d_pred, d_ref = [], []
    for name in dict.fromkeys(names):
        idx = [k for k, n in enumerate(names) if n == name]
        if len(idx) >= 2:
            d_pred.append(energies[idx] - energies[idx].mean())
            d_ref.append(ref_e[idx] - ref_e[idx].mean())
    if not d_ref:
        return None, None
    p, r = np.concatenate(d_pred), np.concatenate(d_ref)
    norm = float(np.linalg.norm(r))
    if norm == 0.0:
        return None, None
    return float(p @ r) / norm**2, float(np.linalg.norm(p - r)) / norm


def _pick_frames(potential: Potential, molecules: list[Molecule], reference: ReferenceSet,
                 max_frames: int) -> tuple[list[Atoms], list[str]]:
    """Up to ``max_frames`` frames: two per molecule (spread over its frames), molecules of the
    validation set first, only frames whose elements the model handles.
    """
    names = reference.names if len(reference.names) == len(reference.frames) else \
        [a.get_chemical_formula() for a in reference.frames]
    groups: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        groups.setdefault(name, []).append(k)
    ok = {name: idx for name, idx in groups.items() if _handles(potential, reference.frames[idx[0]])}
    wanted = [m.name for m in molecules if m.name in ok]
    order = wanted + [n for n in ok if n not in wanted]
    if not order or max_frames < 1:
        return [], []
    n_mols = min(len(order), max(1, max_frames // 2))
    per = max(1, max_frames // n_mols)
    chosen: list[int] = []
    for name in order[:n_mols]:
        idx = ok[name]
        picks = sorted({round(x) for x in np.linspace(0, len(idx) - 1, min(per, len(idx)))})
        chosen += [idx[p] for p in picks]
    return [reference.frames[k] for k in chosen], [names[k] for k in chosen]


# ------------------------------------------------------------------------------- without a reference


def _diagnose_plausibility(potential: Potential, molecules: list[Molecule], base: dict) -> UnitDiagnosis:
    rng = np.random.default_rng(0)
    geoms: list[Atoms] = []
    for m in molecules:
        d = rng.normal(size=m.atoms.positions.shape)
        d /= np.linalg.norm(d)
        plus, minus = m.atoms.copy(), m.atoms.copy()
        plus.positions += DISPLACEMENT_A * d
        minus.positions -= DISPLACEMENT_A * d
        geoms += [m.atoms, plus, minus]
    _, forces = _evaluate(potential, geoms)
    n = len(molecules)
    diag = UnitDiagnosis(method="plausibility", **base, n_frames=n, molecules=[m.name for m in molecules])
    if not all(np.all(np.isfinite(f)) for f in forces):
        diag.note = "the model's forces are not finite: not judged here (the finite check rejects them)"
        return diag
    curv = [float(np.linalg.norm(forces[3 * k + 1] - forces[3 * k + 2])) / (2 * DISPLACEMENT_A) for k in range(n)]
    size = [float(np.median(np.linalg.norm(forces[3 * k], axis=1))) for k in range(n)]
    diag.median_curvature_eV_per_A2 = k_med = float(np.median(curv))
    diag.median_force_eV_per_A = f_med = float(np.median(size))
    if k_med <= MAX_CURVATURE_EV_PER_A2:
        return diag
    what = (f"the force curvature |dF/dx| at the start geometries is {k_med:.4g} eV/Å² (median of {n} "
            f"molecules, median |F| {f_med:.3g} eV/Å; models in eV give 30-60 eV/Å², no covalent bond "
            f"exceeds {MAX_CURVATURE_EV_PER_A2:g})")
    larger = [c for c in _ratios(base["declared_energy_unit"], base["declared_position_unit"]) if c[3] > 1]
    if not larger:
        diag.message = (f"{what}: the forces are implausibly large for the declared units; check the model's "
                        "units, or give a reference set (--reference) to measure their scale")
        return diag
    name, e_unit, l_unit, ratio = min(larger, key=lambda c: abs(math.log(k_med / c[3] / TYPICAL_CURVATURE_EV_PER_A2)))
    diag.matched_unit, diag.matched_ratio = name, ratio
    diag.message = (
        f"{what}: the forces look too large for the declared {_label(base)}, as for a model in {name} "
        f"(1 {_label(base)} = {ratio:.4g} {name}; the curvature would be {k_med / ratio:.3g} eV/Å²); if the "
        f"model's energy unit is {name}, {_advice(e_unit, l_unit, base)}; a reference set (--reference) "
        "measures the scale"
    )
    return diag


# ------------------------------------------------------------------------------- helpers


def _handles(potential: Potential, atoms: Atoms) -> bool:
    """Can the model evaluate these elements (:meth:`check_elements`, when it has one)?"""
    check = getattr(potential, "check_elements", None)
    if check is None:
        return True
    try:
        check({int(z) for z in atoms.numbers})
    except ModelInterfaceError:
        return False
    return True


def _evaluate(potential: Potential, frames: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (eV) and per-frame forces (eV/Å) of ``frames`` in one batched call, with the
    pairs within the cutoff (as :func:`mdgate.stages.accuracy.run_accuracy` builds them).
    """
    dev = potential.device
    numbers = torch.as_tensor(np.concatenate([a.numbers for a in frames]), device=dev)
    pos = torch.as_tensor(np.concatenate([a.positions for a in frames]), device=dev)
    sys_idx = torch.as_tensor(np.repeat(np.arange(len(frames)), [len(a) for a in frames]), device=dev)
    i, j = all_pairs(sys_idx)
    if potential.cutoff_A is not None:
        keep = (pos[i] - pos[j]).norm(dim=1) < potential.cutoff_A
        i, j = i[keep], j[keep]
    try:
        e, f = potential(numbers, pos, sys_idx, len(frames), i, j)
    except MdgateError:
        raise
    except Exception as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise ModelInterfaceError(f"model failed in the unit check ({type(exc).__name__}: {reason})") from exc
    forces = f.detach().cpu().numpy()
    offsets = np.cumsum([0] + [len(a) for a in frames])
    return e.detach().cpu().numpy(), [forces[offsets[k]:offsets[k + 1]] for k in range(len(frames))]


def _times(x: float | None) -> str:
    """``23.1×`` or ``0.0434×``."""
    return "n/a" if x is None else f"{x:.3g}×"


def _label(base: dict) -> str:
    """The declared unit as the message names it (energy unit, with the length unit if not Å)."""
    if length_factor(base["declared_position_unit"]) == 1.0:
        return base["declared_energy_unit"]
    return f"{base['declared_energy_unit']}/{base['declared_position_unit']}"


def _looks_like(name: str, energy_unit: str) -> str:
    """``the model's energy unit looks like kcal/mol`` (``units`` for a force unit such as Hartree/Bohr)."""
    what = "energy unit looks" if name == energy_unit else "units look"
    return f"the model's {what} like {name}"


def _advice(energy_unit: str, position_unit: str, base: dict) -> str:
    """``tag mdgate.energy_unit=X (or --energy-unit X)``, with the length unit when it differs."""
    tags = [f"mdgate.energy_unit={energy_unit}"]
    opts = [f"--energy-unit {energy_unit}"]
    if length_factor(position_unit) != length_factor(base["declared_position_unit"]):
        tags.append(f"mdgate.position_unit={position_unit}")
        opts.append(f"--position-unit {position_unit}")
    return f"tag {' and '.join(tags)} (or {' '.join(opts)})"
