"""Batched MD state and integrator steps, as ``(init, step)`` pairs over one state object.

All molecules of a batch are concatenated; ``system_idx`` maps each atom to its molecule.
Integration is float64; the potential runs in its own dtype. Units are ASE's (eV, Å, amu, ASE
time), so ``F/m·dt`` needs no conversion.

* :func:`verlet_step`: velocity Verlet (Swope et al. 1982), as ``ase.md.verlet.VelocityVerlet``::

      v += dt/2 · F/m;  x += dt · v;  F = F(x);  v += dt/2 · F/m

* :func:`baoab_step`: Langevin BAOAB (Leimkuhler & Matthews 2013), the splitting with the
  smallest configurational bias::

      B: v += dt/2 · F/m;  A: x += dt/2 · v;  O: v = c₁ v + √((1 − c₁²) k_B T / m) ξ
      A: x += dt/2 · v;    F = F(x);          B: v += dt/2 · F/m

  with ``c₁ = exp(−γ dt)``. With γ = 0 the O step is the identity and BAOAB is velocity Verlet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from mdgate.units import KB_EV_PER_K

ForceFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``positions [n_atoms, 3] (Å) -> (energies [n_systems] (eV), forces [n_atoms, 3] (eV/Å))``."""


@dataclass
class MDState:
    """Positions, velocities and forces of a batch of molecules (float64, ASE units).

    Attributes:
        positions: ``[n_atoms, 3]`` Å.
        velocities: ``[n_atoms, 3]`` Å per ASE time unit.
        forces: ``[n_atoms, 3]`` eV/Å at ``positions``.
        energy: ``[n_systems]`` potential energy in eV at ``positions``.
        masses: ``[n_atoms]`` amu.
        system_idx: ``[n_atoms]`` molecule of each atom, sorted.
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    forces: torch.Tensor
    energy: torch.Tensor
    masses: torch.Tensor
    system_idx: torch.Tensor

    def select(self, atom_keep: torch.Tensor, sys_keep: torch.Tensor, system_idx: torch.Tensor) -> MDState:
        """The state of the kept atoms/systems, with the renumbered ``system_idx``."""
        return MDState(self.positions[atom_keep], self.velocities[atom_keep], self.forces[atom_keep],
                       self.energy[sys_keep], self.masses[atom_keep], system_idx)


def md_init(positions: torch.Tensor, velocities: torch.Tensor, masses: torch.Tensor,
            system_idx: torch.Tensor, force_fn: ForceFn) -> MDState:
    """The initial state: forces and energies evaluated at ``positions``."""
    energy, forces = force_fn(positions)
    return MDState(positions, velocities, forces, energy, masses, system_idx)


def verlet_step(state: MDState, force_fn: ForceFn, dt: float) -> MDState:
    """One velocity Verlet step of length ``dt`` (ASE time units)."""
    half = 0.5 * dt / state.masses[:, None]
    v = state.velocities + half * state.forces
    x = state.positions + dt * v
    energy, forces = force_fn(x)
    return replace(state, positions=x, velocities=v + half * forces, forces=forces, energy=energy)


@dataclass
class Langevin:
    """Per-atom Langevin coefficients for a time step ``dt``.

    Attributes:
        c1: ``[n_atoms, 1]`` exp(−γ dt) (1 where γ = 0: those atoms follow NVE).
        noise_per_sqrt_kT: ``[n_atoms, 1]`` √((1 − c₁²) / m): times √(k_B T) gives the O step's noise.
        generator: the seeded source of the noise.
    """

    c1: torch.Tensor
    noise_per_sqrt_kT: torch.Tensor
    generator: torch.Generator

    @classmethod
    def create(cls, friction_per_fs: torch.Tensor, masses: torch.Tensor, dt_fs: float,
               generator: torch.Generator) -> Langevin:
        """Coefficients for per-atom friction ``γ`` (1/fs) and masses (amu)."""
        c1 = torch.exp(-friction_per_fs * dt_fs)[:, None]
        return cls(c1, torch.sqrt((1.0 - c1 * c1) / masses[:, None]), generator)

    def select(self, atom_keep: torch.Tensor) -> Langevin:
        """The coefficients of the kept atoms."""
        return Langevin(self.c1[atom_keep], self.noise_per_sqrt_kT[atom_keep], self.generator)


def baoab_step(state: MDState, force_fn: ForceFn, dt: float, langevin: Langevin,
               temperature_K: torch.Tensor) -> MDState:
    """One BAOAB Langevin step of length ``dt`` at per-atom targets ``temperature_K`` (``[n_atoms]``)."""
    half = 0.5 * dt / state.masses[:, None]
    v = state.velocities + half * state.forces
    x = state.positions + 0.5 * dt * v
    noise = torch.randn(v.shape, dtype=v.dtype, device=v.device, generator=langevin.generator)
    sigma = langevin.noise_per_sqrt_kT * torch.sqrt(KB_EV_PER_K * temperature_K)[:, None]
    v = langevin.c1 * v + sigma * noise
    x = x + 0.5 * dt * v
    energy, forces = force_fn(x)
    return replace(state, positions=x, velocities=v + half * forces, forces=forces, energy=energy)
