"""Batched NVE molecular dynamics: many molecules × replicas advance together, one model call
per step. Integration state is float64; the model runs in its own dtype.

Velocity Verlet (Swope et al. 1982), as in ``ase.md.verlet.VelocityVerlet``::

    v(t+dt/2) = v(t) + dt/2 · F(t)/m
    x(t+dt)   = x(t) + dt · v(t+dt/2)
    v(t+dt)   = v(t+dt/2) + dt/2 · F(t+dt)/m
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms
from ase.neighborlist import NeighborList as AseNeighborList
from ase.neighborlist import natural_cutoffs

from mdgate.molecules import Molecule
from mdgate.neighbors import NeighborList
from mdgate.potentials import Potential
from mdgate.units import FS, KB_EV_PER_K

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


@dataclass
class StopLimits:
    """Limits at which a trajectory is stopped early (``None`` = not checked live).

    Non-finite energies, forces or positions always stop a trajectory.
    """

    max_force_eV_per_A: float | None = None
    max_temperature_K: float | None = None
    max_bond_deviation_A: float | None = None
    max_energy_deviation_meV_per_atom: float | None = None


@dataclass
class Failure:
    """Why and when a trajectory stopped early."""

    check: str
    step: int
    time_ps: float
    value: float


@dataclass
class Trajectory:
    """Recorded observables of one trajectory, every ``record_every`` steps.

    Energies in eV, temperature in K, forces in eV/Å, bond deviation in Å.
    """

    molecule: str
    replica: int
    n_atoms: int
    dof: int
    steps_asked: int
    timestep_fs: float
    steps_done: int = 0
    step: list[int] = field(default_factory=list)
    e_pot_eV: list[float] = field(default_factory=list)
    e_kin_eV: list[float] = field(default_factory=list)
    temperature_K: list[float] = field(default_factory=list)
    max_force_eV_per_A: list[float] = field(default_factory=list)
    max_bond_deviation_A: list[float] = field(default_factory=list)
    failure: Failure | None = None

    @property
    def time_ps(self) -> np.ndarray:
        """Record times in ps."""
        return np.asarray(self.step, dtype=float) * self.timestep_fs * 1e-3

    @property
    def e_tot_eV(self) -> np.ndarray:
        """Total energy in eV."""
        return np.asarray(self.e_pot_eV) + np.asarray(self.e_kin_eV)


ProgressFn = Callable[[int, int, list[bool]], None]


@dataclass
class _Batch:
    numbers: torch.Tensor
    masses: torch.Tensor
    system_idx: torch.Tensor
    orig: torch.Tensor  # original system index of each current system
    bonds: torch.Tensor  # [n_bonds, 2] atom indices
    bond_sys: torch.Tensor
    r0: torch.Tensor
    dof: torch.Tensor
    n_atoms: torch.Tensor

    @property
    def n_systems(self) -> int:
        return int(self.orig.numel())

    def select(self, keep_sys: torch.Tensor) -> tuple[_Batch, torch.Tensor]:
        """Keep only the systems where ``keep_sys``; returns the batch and the atom mask."""
        atom_keep = keep_sys[self.system_idx]
        new_sys = torch.cumsum(keep_sys.long(), 0) - 1
        atom_new = torch.cumsum(atom_keep.long(), 0) - 1
        bond_keep = keep_sys[self.bond_sys]
        batch = _Batch(
            numbers=self.numbers[atom_keep],
            masses=self.masses[atom_keep],
            system_idx=new_sys[self.system_idx[atom_keep]],
            orig=self.orig[keep_sys],
            bonds=atom_new[self.bonds[bond_keep]],
            bond_sys=new_sys[self.bond_sys[bond_keep]],
            r0=self.r0[bond_keep],
            dof=self.dof[keep_sys],
            n_atoms=self.n_atoms[keep_sys],
        )
        return batch, atom_keep


def _per_system_max(values: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.full((n,), float("-inf"), dtype=values.dtype, device=values.device)
    if values.numel():
        out.scatter_reduce_(0, idx, values, "amax", include_self=True)
    return out.clamp(min=0.0)


def run_nve(
    potential: Potential,
    molecules: list[Molecule],
    *,
    n_replicas: int = 1,
    n_steps: int,
    timestep_fs: float,
    temperature_K: float,
    seed: int = 0,
    record_every: int = 10,
    limits: StopLimits | None = None,
    neighbor_skin_A: float = 0.0,
    progress: ProgressFn | None = None,
    compile_at_step: int | None = None,
) -> list[Trajectory]:
    """Run NVE MD for every molecule × replica in one batch.

    With ``compile_at_step``, the potential's ``request_compile()`` is called before that step
    (when it has one and a trajectory still runs).

    A trajectory stops early when its positions, energy or forces become non-finite, or when
    it crosses one of ``limits`` (checked every ``record_every`` steps); the others go on.

    Returns:
        One :class:`Trajectory` per molecule and replica, molecule-major.
    """
    limits = limits or StopLimits()
    device = potential.device
    trajs: list[Trajectory] = []
    pos, vel, numbers, masses, sysi, bonds, bond_sys, r0, dofs, natoms = ([] for _ in range(10))
    offset = 0
    for mol in molecules:
        mol_bonds = find_bonds(mol.atoms)
        dof = degrees_of_freedom(mol.atoms)
        for r in range(n_replicas):
            s = len(trajs)
            rng = np.random.default_rng(replica_seed(seed, mol.name, r))
            trajs.append(Trajectory(mol.name, r, len(mol.atoms), dof, n_steps, timestep_fs))
            pos.append(mol.atoms.positions)
            vel.append(maxwell_boltzmann(mol.atoms, temperature_K, rng))
            numbers.append(mol.atoms.numbers)
            masses.append(mol.atoms.get_masses())
            sysi.append(np.full(len(mol.atoms), s))
            bonds.append(mol_bonds + offset)
            bond_sys.append(np.full(len(mol_bonds), s))
            p = mol.atoms.positions
            r0.append(np.linalg.norm(p[mol_bonds[:, 0]] - p[mol_bonds[:, 1]], axis=1))
            dofs.append(dof)
            natoms.append(len(mol.atoms))
            offset += len(mol.atoms)

    def t(x: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.concatenate(x) if isinstance(x[0], np.ndarray) else np.array(x),
                               dtype=dtype, device=device)

    f64, long = torch.float64, torch.long
    x = t(pos, f64)
    v = t(vel, f64)
    batch = _Batch(
        numbers=t(numbers, long), masses=t(masses, f64), system_idx=t(sysi, long),
        orig=torch.arange(len(trajs), device=device),
        bonds=t(bonds, long).reshape(-1, 2), bond_sys=t(bond_sys, long), r0=t(r0, f64),
        dof=t(dofs, f64), n_atoms=t(natoms, f64),
    )
    nl = NeighborList(batch.system_idx, potential.cutoff_A, neighbor_skin_A)
    dt = timestep_fs * FS

    def forces(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, j = nl.update(x)
        return potential(batch.numbers, x, batch.system_idx, batch.n_systems, i, j)

    e_pot, f = forces(x)
    e0: torch.Tensor | None = None
    active = [True] * len(trajs)
    half_dt_inv_m = 0.5 * dt / batch.masses[:, None]
    for step in range(0, n_steps + 1):
        if step > 0:
            if step == compile_at_step and hasattr(potential, "request_compile"):
                potential.request_compile()
            v = v + half_dt_inv_m * f
            x = x + dt * v
            e_pot, f = forces(x)
            v = v + half_dt_inv_m * f
        if step % record_every and step != n_steps:
            continue
        # Record: one device→host transfer per record step.
        S = batch.n_systems
        ekin = torch.zeros(S, dtype=f64, device=device).index_add_(
            0, batch.system_idx, 0.5 * batch.masses * (v * v).sum(1))
        temp = 2.0 * ekin / (batch.dof.clamp(min=1) * KB_EV_PER_K)
        fmax = _per_system_max(f.abs().amax(1), batch.system_idx, S)
        if batch.bonds.numel():
            d = (x[batch.bonds[:, 0]] - x[batch.bonds[:, 1]]).norm(dim=1)
            bdev = _per_system_max((d - batch.r0).abs(), batch.bond_sys, S)
        else:
            bdev = torch.zeros(S, dtype=f64, device=device)
        finite_atom = torch.isfinite(x).all(1) & torch.isfinite(f).all(1) & torch.isfinite(v).all(1)
        n_bad = torch.zeros(S, dtype=torch.long, device=device).index_add_(
            0, batch.system_idx, (~finite_atom).long())
        finite = n_bad == 0
        finite &= torch.isfinite(e_pot)
        etot = e_pot + ekin
        if e0 is None:
            e0 = etot.clone()
        edev = (etot - e0).abs() / batch.n_atoms * 1000.0
        rows = torch.stack([e_pot, ekin, temp, fmax, bdev, edev, finite.to(f64)], 1).cpu().numpy()
        keep = np.ones(S, dtype=bool)
        orig = batch.orig.cpu().numpy()
        for k, s in enumerate(orig):
            tr = trajs[s]
            ep, ek, tk, fm, bd, ed, fin = rows[k]
            tr.step.append(step)
            tr.e_pot_eV.append(float(ep))
            tr.e_kin_eV.append(float(ek))
            tr.temperature_K.append(float(tk))
            tr.max_force_eV_per_A.append(float(fm))
            tr.max_bond_deviation_A.append(float(bd))
            tr.steps_done = step
            failure = None
            if not fin:
                failure = ("finite", float("nan"))
            else:
                for name, value, bound in (
                    ("max_force_eV_per_A", fm, limits.max_force_eV_per_A),
                    ("max_temperature_K", tk, limits.max_temperature_K),
                    ("max_bond_deviation_A", bd, limits.max_bond_deviation_A),
                    ("max_energy_deviation_meV_per_atom", ed, limits.max_energy_deviation_meV_per_atom),
                ):
                    if bound is not None and value > bound:
                        failure = (name, float(value))
                        break
            if failure is not None:
                tr.failure = Failure(failure[0], step, step * timestep_fs * 1e-3, failure[1])
                keep[k] = False
                active[s] = False
        if progress is not None:
            progress(step, n_steps, list(active))
        if not keep.all():
            if not keep.any():
                break
            keep_t = torch.as_tensor(keep, device=device)
            batch, atom_keep = batch.select(keep_t)
            x, v, f = x[atom_keep], v[atom_keep], f[atom_keep]
            half_dt_inv_m = half_dt_inv_m[atom_keep]
            e0, e_pot = e0[keep_t], e_pot[keep_t]
            # Molecules do not interact: the survivors' forces stay valid, only pairs change.
            nl = NeighborList(batch.system_idx, potential.cutoff_A, neighbor_skin_A)
    return trajs
