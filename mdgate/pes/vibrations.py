"""Harmonic frequencies from a finite-difference Hessian, mass-weighted, with the six (five for a
linear molecule) rigid-body motions projected out exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase.data import atomic_masses
from ase.units import _amu, _c, _e

#: cm⁻¹ per √(eV / Å² / amu): ω = √λ in rad/s, ν̃ = ω / (2π c).
CM1_PER_SQRT_EV_A2_AMU = float(np.sqrt(_e / _amu) * 1e10 / (2 * np.pi * _c * 100))

Structures = list[tuple[np.ndarray, np.ndarray]]
ForcesFn = Callable[[Structures], list[np.ndarray]]


def displaced(numbers: np.ndarray, positions: np.ndarray, step_A: float) -> Structures:
    """The ``6 n`` structures of a central-difference Hessian: each coordinate ``+h`` then ``-h``."""
    out = []
    for c in range(positions.size):
        for sign in (1.0, -1.0):
            x = positions.copy().reshape(-1)
            x[c] += sign * step_A
            out.append((numbers, x.reshape(-1, 3)))
    return out


def hessian(forces: list[np.ndarray], step_A: float) -> np.ndarray:
    """The symmetrised Hessian (eV/Å²) from the forces of :func:`displaced` structures."""
    f = np.array([x.reshape(-1) for x in forces])
    h = -(f[0::2] - f[1::2]) / (2 * step_A)
    return 0.5 * (h + h.T)


def _internal_basis(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``[3n, 3n - 6]`` (``- 5`` when linear) of the mass-weighted coordinates
    orthogonal to rigid translations and rotations.
    """
    m = np.sqrt(atomic_masses[numbers])
    x = positions - (atomic_masses[numbers][:, None] * positions).sum(0) / atomic_masses[numbers].sum()
    n = len(numbers)
    rigid = []
    for a in range(3):
        t = np.zeros((n, 3))
        t[:, a] = m
        rigid.append(t.reshape(-1))
        axis = np.zeros(3)
        axis[a] = 1.0
        rigid.append((np.cross(axis, x) * m[:, None]).reshape(-1))
    u, s, _ = np.linalg.svd(np.array(rigid).T, full_matrices=True)
    rank = int((s > 1e-6 * s.max()).sum())
    return u[:, rank:]


def frequencies_cm1(numbers: np.ndarray, positions: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """Harmonic wavenumbers (cm⁻¹), ascending; an imaginary mode is negative."""
    inv_m = 1.0 / np.sqrt(np.repeat(atomic_masses[numbers], 3))
    mw = hess * inv_m[:, None] * inv_m[None, :]
    basis = _internal_basis(numbers, positions)
    lam = np.linalg.eigvalsh(basis.T @ mw @ basis)
    return np.sign(lam) * np.sqrt(np.abs(lam)) * CM1_PER_SQRT_EV_A2_AMU


def harmonic(numbers: np.ndarray, positions: np.ndarray, forces_fn: ForcesFn, step_A: float) -> np.ndarray:
    """Wavenumbers (cm⁻¹) of the structure under the potential behind ``forces_fn``."""
    return frequencies_cm1(numbers, positions, hessian(forces_fn(displaced(numbers, positions, step_A)), step_A))
