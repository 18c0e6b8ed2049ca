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
from dataclasses import dataclass

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


_HALF_KICK: tuple[torch.Tensor, float, torch.Tensor] | None = None


def half_kick(masses: torch.Tensor, dt: float) -> torch.Tensor:
    """``dt / 2m`` per atom, ``[n_atoms, 1]``: the same for every step of a batch, computed once
    (a one-entry cache keyed by the masses tensor itself; a batch that drops trajectories gets a
    new one).
    """
    global _HALF_KICK
    entry = _HALF_KICK
    if entry is not None and entry[0] is masses and entry[1] == dt:
        return entry[2]
    half = 0.5 * dt / masses[:, None]
    _HALF_KICK = (masses, dt, half)
    return half


def verlet_step(state: MDState, force_fn: ForceFn, dt: float) -> MDState:
    """One velocity Verlet step of length ``dt`` (ASE time units)."""
    half = half_kick(state.masses, dt)
    v = state.velocities + half * state.forces
    x = state.positions + dt * v
    energy, forces = force_fn(x)
    return MDState(x, v + half * forces, forces, energy, state.masses, state.system_idx)


class NoiseStreams:
    """Gaussian noise for the O step, one seeded stream per trajectory.

    A trajectory's noise comes from its own generator, so it is the same whether the trajectory
    runs alone, with its replicas, or in a gate's whole batch. Each stream draws ``chunk`` steps
    at a time (one generator call per trajectory every ``chunk`` steps, not every step).
    """

    def __init__(self, seeds: list[int | None], n_atoms: list[int], device: torch.device,
                 dtype: torch.dtype = torch.float64, chunk: int = 64) -> None:
        """``seeds[s]`` seeds trajectory ``s``; ``None`` gives it no noise (an NVE trajectory)."""
        self.generators: list[torch.Generator | None] = []
        for seed in seeds:
            gen = None
            if seed is not None:
                gen = torch.Generator(device=device)
                gen.manual_seed(int(seed))
            self.generators.append(gen)
        self.n_atoms, self.device, self.dtype, self.chunk = list(n_atoms), device, dtype, chunk
        self._buf: torch.Tensor | None = None
        self._pos = chunk

    def next(self) -> torch.Tensor:
        """The ``[n_atoms, 3]`` noise of the next step."""
        if self._buf is None or self._pos == self.chunk:
            parts = [torch.zeros((self.chunk, n, 3), dtype=self.dtype, device=self.device) if g is None else
                     torch.randn((self.chunk, n, 3), dtype=self.dtype, device=self.device, generator=g)
                     for g, n in zip(self.generators, self.n_atoms, strict=True)]
            self._buf, self._pos = torch.cat(parts, 1), 0
        out = self._buf[self._pos]
        self._pos += 1
        return out

    def select(self, keep_sys: list[bool], atom_keep: torch.Tensor) -> NoiseStreams:
        """The streams of the kept trajectories, each where it was."""
        out = NoiseStreams.__new__(NoiseStreams)
        out.generators = [g for g, k in zip(self.generators, keep_sys, strict=True) if k]
        out.n_atoms = [n for n, k in zip(self.n_atoms, keep_sys, strict=True) if k]
        out.device, out.dtype, out.chunk, out._pos = self.device, self.dtype, self.chunk, self._pos
        out._buf = None if self._buf is None else self._buf[:, atom_keep]
        return out


@dataclass
class Langevin:
    """Per-atom Langevin coefficients for a time step ``dt``.

    Attributes:
        c1: ``[n_atoms, 1]`` exp(−γ dt) (1 where γ = 0: those atoms follow NVE).
        noise_per_sqrt_kT: ``[n_atoms, 1]`` √((1 − c₁²) / m): times √(k_B T) gives the O step's noise.
        noise: the per-trajectory seeded noise.
    """

    c1: torch.Tensor
    noise_per_sqrt_kT: torch.Tensor
    noise: NoiseStreams

    @classmethod
    def create(cls, friction_per_fs: torch.Tensor, masses: torch.Tensor, dt_fs: float,
               noise: NoiseStreams) -> Langevin:
        """Coefficients for per-atom friction ``γ`` (1/fs) and masses (amu)."""
        c1 = torch.exp(-friction_per_fs * dt_fs)[:, None]
        return cls(c1, torch.sqrt((1.0 - c1 * c1) / masses[:, None]), noise)

    def select(self, keep_sys: list[bool], atom_keep: torch.Tensor) -> Langevin:
        """The coefficients and noise streams of the kept trajectories."""
        return Langevin(self.c1[atom_keep], self.noise_per_sqrt_kT[atom_keep], self.noise.select(keep_sys, atom_keep))


def baoab_step(state: MDState, force_fn: ForceFn, dt: float, langevin: Langevin,
               temperature_K: torch.Tensor) -> MDState:
    """One BAOAB Langevin step of length ``dt`` at per-atom targets ``temperature_K`` (``[n_atoms]``)."""
    half = half_kick(state.masses, dt)
    v = state.velocities + half * state.forces
    x = state.positions + 0.5 * dt * v
    noise = langevin.noise.next()
    sigma = langevin.noise_per_sqrt_kT * torch.sqrt(KB_EV_PER_K * temperature_K)[:, None]
    v = langevin.c1 * v + sigma * noise
    x = x + 0.5 * dt * v
    energy, forces = force_fn(x)
    return MDState(x, v + half * forces, forces, energy, state.masses, state.system_idx)
