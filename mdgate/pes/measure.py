"""The candidate's side of the landscape and the figures the ``pes`` checks judge.

Every candidate evaluation is batched (:func:`~mdgate.potentials.predict.predict`): conformer
energies, the rigid torsion scans, the finite-difference Hessian and the close-contact pulls are
each one batched pass; the relaxations from the oracle's minima run together, one batched call
per optimizer step (FIRE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from ase.data import covalent_radii

from mdgate.pes.reference import PesReference, torsion_structures
from mdgate.pes.vibrations import harmonic
from mdgate.potentials import Potential
from mdgate.potentials.predict import predict
from mdgate.stages.sanity import kabsch_rmsd_A

if TYPE_CHECKING:
    from mdgate.config import PesSettings
    from mdgate.molecules import Molecule
    from mdgate.stages.oracle import Oracle

Structures = list[tuple[np.ndarray, np.ndarray]]


class NonFiniteOutput(ValueError):
    """The model returned NaN/inf on a landscape structure."""


@dataclass
class PesCurves:
    """What the report plots for one molecule (energies in meV relative to the lowest minimum or
    to the scan's start).
    """

    conformer_oracle_meV: list[float] = field(default_factory=list)
    conformer_model_meV: list[float] = field(default_factory=list)
    torsion_angles_deg: list[float] = field(default_factory=list)
    torsion_labels: list[str] = field(default_factory=list)
    torsion_oracle_meV: list[list[float]] = field(default_factory=list)
    torsion_model_meV: list[list[float]] = field(default_factory=list)
    model_minimum: list[list[float]] = field(default_factory=list)
    """The model's own minimum relaxed from the oracle's lowest (where its frequencies are taken)."""


def relax_batch(potential: Potential, structures: Structures, fmax_eV_per_A: float,
                max_steps: int) -> tuple[list[np.ndarray], np.ndarray]:
    """FIRE on every structure at once (one batched call per step).

    Returns:
        Final positions per structure, and each one's final max force component (eV/Å).
    """
    x = [np.array(p, float) for _, p in structures]
    z = [s[0] for s in structures]
    v = [np.zeros_like(p) for p in x]
    dt = np.full(len(x), 0.1)
    alpha = np.full(len(x), 0.1)
    n_pos = np.zeros(len(x), int)
    fmax = np.full(len(x), np.inf)
    for _ in range(max_steps):
        _, forces = predict(potential, list(zip(z, x, strict=True)), batch_size=64)
        fmax = np.array([np.abs(f).max() for f in forces])
        if (fmax < fmax_eV_per_A).all():
            break
        for k, f in enumerate(forces):
            if fmax[k] < fmax_eV_per_A:
                continue
            p = float(np.vdot(f, v[k]))
            if p > 0:
                fn = f / max(np.linalg.norm(f), 1e-12)
                v[k] = (1 - alpha[k]) * v[k] + alpha[k] * np.linalg.norm(v[k]) * fn
                n_pos[k] += 1
                if n_pos[k] > 5:
                    dt[k], alpha[k] = min(dt[k] * 1.1, 1.0), alpha[k] * 0.99
            else:
                v[k][:] = 0.0
                dt[k], alpha[k], n_pos[k] = dt[k] * 0.5, 0.1, 0
            v[k] += dt[k] * f
            step = dt[k] * v[k]
            norm = np.linalg.norm(step)
            x[k] = x[k] + (step * 0.2 / norm if norm > 0.2 else step)
    return x, fmax


def conformers(potential: Potential, ref: PesReference, settings: PesSettings,
               curves: PesCurves) -> dict[str, float | None]:
    """Relative conformer energies model vs oracle and rank agreement (conformers within
    ``conformer_window_meV`` of the lowest), and how far the model's own relaxation from each
    oracle minimum goes.
    """
    z = ref.z
    minima = [ref.minimum(k) for k in range(len(ref.conformers))]
    e_model, _ = predict(potential, [(z, x) for x in minima])
    if not np.isfinite(e_model).all():
        raise NonFiniteOutput("the model returned non-finite energies at the oracle's minima")
    rel_model = (e_model - e_model[0]) * 1000
    rel_oracle = (np.array(ref.conformer_energies_eV) - ref.conformer_energies_eV[0]) * 1000
    curves.conformer_model_meV, curves.conformer_oracle_meV = rel_model.tolist(), rel_oracle.tolist()
    relaxed, fmax = relax_batch(potential, [(z, x) for x in minima], settings.relax_fmax_eV_per_A,
                                settings.relax_max_steps)
    if not all(np.isfinite(x).all() for x in relaxed):
        raise NonFiniteOutput("the model's relaxation from the oracle's minima went non-finite")
    curves.model_minimum = relaxed[0].tolist()
    out: dict[str, float | None] = {
        "model_minimum_max_force_eV_per_A": float(fmax[0]),
        "n_conformers": float(len(minima)),
        "conformer_relax_rmsd_A": max(kabsch_rmsd_A(a, b) for a, b in zip(relaxed, minima, strict=True)),
        "conformer_energy_max_error_meV": None, "conformer_energy_mae_meV": None, "conformer_rank_agreement": None}
    inside = np.flatnonzero(rel_oracle <= settings.conformer_window_meV)
    out["n_conformers_in_window"] = float(len(inside))
    if len(inside) < 2:
        return out
    err = np.abs(rel_model - rel_oracle)[inside[1:]]
    pairs = [(a, b) for a in inside for b in inside if a < b]
    same = [np.sign(rel_model[a] - rel_model[b]) == np.sign(rel_oracle[a] - rel_oracle[b]) for a, b in pairs]
    out.update({"conformer_energy_max_error_meV": float(err.max()), "conformer_energy_mae_meV": float(err.mean()),
                "conformer_rank_agreement": float(np.mean(same))})
    return out


def torsions(potential: Potential, ref: PesReference, settings: PesSettings,
             curves: PesCurves) -> dict[str, float | None]:
    """Relaxed torsion profiles model vs oracle (model energies at the oracle's scan geometries),
    over the angles reachable from the minimum below ``torsion_window_meV`` (:func:`basin`).
    """
    out: dict[str, float | None] = {"n_torsions": float(len(ref.rotors)), "torsion_profile_mae_meV": None,
                                    "torsion_barrier_error_meV": None}
    if not ref.rotors:
        return out
    e, _ = predict(potential, torsion_structures(ref))
    n = len(ref.torsion_angles_deg)
    symbols = ref.z
    mae, barrier = [], []
    for r, rotor in enumerate(ref.rotors):
        model = (e[r * n:(r + 1) * n] - e[r * n]) * 1000
        oracle = (np.array(ref.torsion_energies_eV[r]) - ref.torsion_energies_eV[r][0]) * 1000
        ok = basin(oracle, settings.torsion_window_meV)
        mae.append(float(np.abs(model - oracle)[ok].mean()))
        barrier.append(float(abs(model[ok].max() - oracle[ok].max())))
        curves.torsion_labels.append(_bond_label(symbols, rotor))
        curves.torsion_model_meV.append(model.tolist())
        curves.torsion_oracle_meV.append(oracle.tolist())
    curves.torsion_angles_deg = list(ref.torsion_angles_deg)
    curves.torsion_labels[int(np.argmax(mae))] += " (worst)"
    out.update({"torsion_profile_mae_meV": max(mae), "torsion_barrier_error_meV": max(barrier)})
    return out


def basin(profile_meV: np.ndarray, window_meV: float) -> np.ndarray:
    """The angles of a full-turn profile reachable from angle 0 (the minimum) in either direction
    without climbing above ``window_meV``: what MD at the protocol's temperatures visits. A state
    behind a higher barrier (a cis amide) is left to the conformer check.
    """
    e = np.asarray(profile_meV, float)
    ok = np.isfinite(e) & (e <= window_meV)
    mask = np.zeros(len(e), bool)
    if not ok[0]:
        return mask
    for step in (1, -1):
        k = 0
        while ok[k] and (k == 0 or not mask[k]):
            mask[k] = True
            k = (k + step) % len(e)
            if k == 0:
                break
    return mask


def _bond_label(numbers: np.ndarray, bond: list[int] | tuple[int, int]) -> str:
    from ase.data import chemical_symbols

    a, b = bond
    return f"{chemical_symbols[numbers[a]]}{a}–{chemical_symbols[numbers[b]]}{b}"


def vibrations(potential: Potential, ref: PesReference, settings: PesSettings,
               minimum: np.ndarray) -> dict[str, float | None]:
    """Harmonic wavenumbers, each method at its own minimum (the model's ``minimum`` relaxed from
    the oracle's lowest): mean absolute error over the modes (each sorted), the largest error, and
    imaginary modes beyond ``imaginary_threshold_cm1`` that the oracle does not have (the model's
    minimum is a saddle point).
    """
    def forces(structures: Structures) -> list[np.ndarray]:
        return predict(potential, structures, batch_size=64)[1]

    model = harmonic(ref.z, minimum, forces, settings.hessian_step_A)
    oracle = np.array(ref.frequencies_cm1)
    cut = settings.imaginary_threshold_cm1
    extra = max(0, int((model < -cut).sum()) - int((oracle < -cut).sum()))
    err = np.abs(model - oracle)
    return {"frequency_mae_cm1": float(err.mean()), "frequency_max_error_cm1": float(err.max()),
            "spurious_imaginary_modes": float(extra), "lowest_frequency_cm1": float(model[0])}


def contact_pairs(numbers: np.ndarray, positions: np.ndarray, max_distance_A: float) -> list[tuple[int, int, bool]]:
    """Pairs ``(i, j, bonded)`` a close-contact pull tests: every bond, and every other pair
    closer than ``max_distance_A`` at the start geometry.
    """
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    r = covalent_radii[numbers]
    out = []
    for i in range(len(numbers)):
        for j in range(i + 1, len(numbers)):
            bonded = bool(d[i, j] < 1.3 * (r[i] + r[j]))
            if bonded or d[i, j] <= max_distance_A:
                out.append((i, j, bonded))
    return out


def pull(positions: np.ndarray, i: int, j: int, distance_A: float) -> np.ndarray:
    """``positions`` with atoms ``i`` and ``j`` moved towards each other along their vector, each by
    half, to ``distance_A`` apart (everything else fixed).
    """
    vec = positions[j] - positions[i]
    d0 = float(np.linalg.norm(vec))
    shift = 0.5 * (d0 - distance_A) * vec / d0
    x = positions.copy()
    x[i] += shift
    x[j] -= shift
    return x


def pull_distances(d0: float, settings: PesSettings) -> np.ndarray:
    """The distances of one pull: from the start ``d0`` down to ``contact_min_distance_A`` in
    steps of ``contact_step_A``.
    """
    n = max(2, int(np.floor((d0 - settings.contact_min_distance_A) / settings.contact_step_A + 1e-9)) + 1)
    return d0 - settings.contact_step_A * np.arange(n)


def reachable(energies_eV: np.ndarray, reach_meV: float) -> int:
    """How many points of a pull lie before the model's energy first rises more than ``reach_meV``
    above the start (MD on the model does not climb further; a well behind such a wall is never
    found).
    """
    e = np.asarray(energies_eV, float)
    over = np.flatnonzero(~((e - e[0]) * 1000 <= reach_meV))
    return int(over[0]) if over.size else len(e)


def well_depth_meV(energies_eV: np.ndarray) -> float:
    """How far the energy falls while the pair is pushed closer: the largest drop from any point to
    a closer one (0 for a curve that only rises); infinite for a non-finite energy.
    """
    e = np.asarray(energies_eV, float)
    if not np.isfinite(e).all():
        return float("inf")
    return float((np.maximum.accumulate(e) - e).max() * 1000) if e.size else 0.0


def pull_energies(evaluate, numbers: np.ndarray, positions: np.ndarray, pairs: list[tuple[int, int, bool]],
                  settings: PesSettings) -> list[np.ndarray]:
    """Each pair's pull energies (eV) down to where the energy first rises more than
    ``contact_reach_meV`` (or turns non-finite): evaluated in rounds of a few points for every pair
    still below its wall, one batched call per round.
    """
    distances = [pull_distances(float(np.linalg.norm(positions[j] - positions[i])), settings) for i, j, _ in pairs]
    energies: list[list[float]] = [[] for _ in pairs]
    active = list(range(len(pairs)))
    while active:
        todo = [(k, d) for k in active for d in distances[k][len(energies[k]):len(energies[k]) + PULL_ROUND]]
        e, _ = evaluate([(numbers, pull(positions, pairs[k][0], pairs[k][1], d)) for k, d in todo])
        for (k, _), value in zip(todo, e, strict=True):
            energies[k].append(float(value))
        active = [k for k in active if len(energies[k]) < len(distances[k]) and np.isfinite(energies[k]).all()
                  and reachable(np.array(energies[k]), settings.contact_reach_meV) == len(energies[k])]
    return [np.array(e) for e in energies]


#: Points of a pull evaluated per round (a bond reaches its wall within a few).
PULL_ROUND = 4


def contacts(potential: Potential, mol: Molecule, settings: PesSettings,
             oracle: Oracle) -> tuple[dict[str, float | None], str | None]:
    """Close contacts: the deepest spurious well (meV) a pull finds in the model, within
    ``contact_reach_meV`` of the start on the model's own curve, where the oracle's curve has none
    (the oracle is asked only about pairs where the model's well exceeds ``contact_tolerance_meV``),
    and the pair it was found on.
    """
    z, x0 = mol.atoms.numbers, mol.atoms.positions
    pairs = contact_pairs(z, x0, settings.contact_max_distance_A)
    curves = pull_energies(lambda s: predict(potential, s, batch_size=128), z, x0, pairs, settings)
    # A non-finite energy counts wherever it is; a well only before the model's wall.
    reach = [reachable(c, settings.contact_reach_meV) if np.isfinite(c).all() else len(c) for c in curves]
    wells = np.array([well_depth_meV(c[:r]) for c, r in zip(curves, reach, strict=True)])
    flagged = [k for k in range(len(pairs)) if wells[k] > settings.contact_tolerance_meV]
    for k in flagged:
        i, j, _ = pairs[k]
        d = pull_distances(float(np.linalg.norm(x0[j] - x0[i])), settings)[:reach[k]]
        e_or, _ = oracle.evaluate([(z, pull(x0, i, j, dist)) for dist in d])
        oracle_well = well_depth_meV(e_or)
        wells[k] = max(0.0, wells[k] - (oracle_well if np.isfinite(oracle_well) else 0.0))
    worst = int(np.argmax(wells))
    i, j, bonded = pairs[worst]
    where = f"{_bond_label(z, (i, j))} ({'bond' if bonded else 'non-bonded'}, {np.linalg.norm(x0[j] - x0[i]):.2f} Å)"
    return ({"close_contact_well_meV": float(wells[worst]), "n_contact_pairs": float(len(pairs)),
             "n_contact_points": float(sum(len(c) for c in curves)),
             "n_contact_pairs_checked_by_oracle": float(len(flagged))}, where)
