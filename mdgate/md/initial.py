"""Initial conditions of a trajectory: covalent bonds at t = 0, degrees of freedom, and
Maxwell–Boltzmann velocities at exactly the asked temperature, seeded per (seed, molecule,
replica).
"""

from __future__ import annotations

import zlib

import numpy as np
from ase import Atoms
from ase.neighborlist import NeighborList as AseNeighborList
from ase.neighborlist import natural_cutoffs

from mdgate.units import KB_EV_PER_K

#: natural_cutoffs multiplier for bond detection: covalent radii sum to *less* than a C–H bond
#: (0.76 + 0.31 = 1.07 Å < 1.09 Å), so a skin-less list silently drops C–H bonds.
BOND_CUTOFF_MULT = 1.2


def find_bonds(atoms: Atoms) -> np.ndarray:
    """Covalent bonds of a molecule: pairs closer than 1.2 × the sum of covalent radii.

    Returns:
        ``[n_bonds, 2]`` int array of atom indices, ``i < j``.
    """
    nl = AseNeighborList(
        natural_cutoffs(atoms, mult=BOND_CUTOFF_MULT), self_interaction=False, bothways=False, skin=0.0
    )
    nl.update(atoms)
    bonds = []
    for i in range(len(atoms)):
        js, _ = nl.get_neighbors(i)
        bonds += [(i, int(j)) for j in js if j > i]
    return np.array(sorted(bonds), dtype=np.int64).reshape(-1, 2)


def degrees_of_freedom(atoms: Atoms) -> int:
    """3N − 6 (3N − 5 if linear): translations and rotations are removed at start."""
    n = len(atoms)
    if n == 1:
        return 0
    inertia = np.linalg.eigvalsh(_inertia(atoms.positions - atoms.get_center_of_mass(), atoms.get_masses()))
    linear = inertia[0] < 1e-6 * max(inertia[-1], 1e-12)
    return 3 * n - (5 if linear else 6)


def _inertia(r: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.einsum("i,ij->ij", m, r).T @ r * -1 + np.eye(3) * np.sum(m * np.sum(r * r, axis=1))


def replica_seed(seed: int, name: str, replica: int) -> np.random.SeedSequence:
    """A seed per (base seed, molecule name, replica), stable under reordering of the set."""
    return np.random.SeedSequence([seed, zlib.crc32(name.encode()), replica])


def noise_seed(seed: int, name: str, replica: int) -> int:
    """The thermostat-noise seed of one trajectory: independent of its velocity seed."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode()), replica, 1]).generate_state(1)[0])


def maxwell_boltzmann(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> np.ndarray:
    """Velocities (Å per ASE time unit) at exactly ``temperature_K``.

    Draws Maxwell–Boltzmann velocities, removes centre-of-mass momentum and angular momentum,
    then rescales so that E_kin = ½·dof·k_B·T with dof = 3N − 6. Without the rescale a
    10-atom molecule routinely starts 100 K off the asked temperature.
    """
    m = atoms.get_masses()
    v = rng.normal(size=(len(atoms), 3)) * np.sqrt(KB_EV_PER_K * temperature_K / m)[:, None]
    v -= (m[:, None] * v).sum(axis=0) / m.sum()
    r = atoms.positions - atoms.get_center_of_mass()
    if len(atoms) > 1:
        # Diatomics too: their rotation is not among the 3N − 5 = 1 degrees of freedom. lstsq
        # copes with the singular inertia tensor of linear molecules.
        L = np.sum(np.cross(r, m[:, None] * v), axis=0)
        omega = np.linalg.lstsq(_inertia(r, m), L, rcond=None)[0]
        v -= np.cross(omega, r)
    dof = degrees_of_freedom(atoms)
    ekin = 0.5 * np.sum(m[:, None] * v * v)
    if ekin > 0 and dof > 0:
        v *= np.sqrt(0.5 * dof * KB_EV_PER_K * temperature_K / ekin)
    return v
