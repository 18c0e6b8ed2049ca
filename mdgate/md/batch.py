"""Batched molecular dynamics: many molecules × replicas (and stages) advance together, one
model call per step, through one loop (:func:`run_batch`) shared by the NVE stage
(:func:`run_nve`, velocity Verlet) and the heat-stress stage (:func:`run_stress`, Langevin BAOAB
with a temperature ramp). Integrators are in :mod:`mdgate.md.integrators`.

Every ``record_every`` steps the loop records the observables of each trajectory and applies the
live failure detectors (non-finite values, force, temperature, temperature jump, bond deviation,
closest approach, lost H atoms, energy deviation: the table's live checks, measured by
:mod:`mdgate.md.observers`); a trajectory that fails is stopped with the
step, time and temperature of the failure, the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mdgate.checks.table import CHECKS
from mdgate.md.initial import degrees_of_freedom, find_bonds
from mdgate.md.integrators import Langevin, MDState, NoiseStreams, baoab_step, md_init, verlet_step
from mdgate.md.neighbors import NeighborList
from mdgate.md.observers import OBSERVERS, Observation
from mdgate.md.trajectory import (
    HELD,
    LIVE,
    Failure,
    ProgressFn,
    Ramp,
    StopLimits,
    Trajectory,
    TrajectorySpec,
    nve_specs,
    stress_specs,
)
from mdgate.molecules import Molecule
from mdgate.potentials import Potential
from mdgate.units import FS, KB_EV_PER_K


@dataclass
class _Batch:
    """Per-atom and per-system constants of the systems still running."""

    numbers: torch.Tensor
    orig: torch.Tensor  # original trajectory index of each current system
    bonds: torch.Tensor  # [n_bonds, 2] atom indices
    bond_sys: torch.Tensor
    r0: torch.Tensor
    dof: torch.Tensor
    n_atoms: torch.Tensor
    is_h: torch.Tensor
    limits: torch.Tensor  # [n_systems, n_limits]: +inf (or -inf for lower bounds) = unchecked
    ramp: torch.Tensor  # [n_systems, 4]: start_K, end_K, ramp_steps, friction_per_fs (0 = NVE)

    def select(self, keep_sys: torch.Tensor, system_idx: torch.Tensor) -> tuple[_Batch, torch.Tensor, torch.Tensor]:
        """Keep only the systems where ``keep_sys``: the batch, the atom mask, the new system index."""
        atom_keep = keep_sys[system_idx]
        new_sys = torch.cumsum(keep_sys.long(), 0) - 1
        atom_new = torch.cumsum(atom_keep.long(), 0) - 1
        bond_keep = keep_sys[self.bond_sys]
        batch = _Batch(
            numbers=self.numbers[atom_keep], orig=self.orig[keep_sys], bonds=atom_new[self.bonds[bond_keep]],
            bond_sys=new_sys[self.bond_sys[bond_keep]], r0=self.r0[bond_keep], dof=self.dof[keep_sys],
            n_atoms=self.n_atoms[keep_sys], is_h=self.is_h[atom_keep], limits=self.limits[keep_sys],
            ramp=self.ramp[keep_sys])
        return batch, atom_keep, new_sys[system_idx[atom_keep]]


def _targets_K(batch: _Batch, step: int) -> torch.Tensor:
    """Thermostat target per system at ``step`` (0 for NVE systems)."""
    start, end, n_ramp = batch.ramp[:, 0], batch.ramp[:, 1], batch.ramp[:, 2]
    frac = torch.where(n_ramp > 0, (step / n_ramp.clamp(min=1)).clamp(max=1.0), torch.ones_like(n_ramp))
    return torch.where(batch.ramp[:, 3] > 0, start + (end - start) * frac, torch.zeros_like(start))


def _observe(state: MDState, batch: _Batch, pairs: tuple[torch.Tensor, torch.Tensor], e0: torch.Tensor | None,
             t_prev: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
    """The record matrix ``[n_systems, 4 + len(LIVE) + 1]``: e_pot, e_kin, T, target T, then the
    value of each live check (its observer in :mod:`mdgate.md.observers`), then finite (1/0).
    ``e0``/``t_prev`` ``None``: the first record.
    """
    x, v, f, sysi = state.positions, state.velocities, state.forces, state.system_idx
    S, f64 = batch.orig.numel(), x.dtype
    ekin = torch.zeros(S, dtype=f64, device=x.device).index_add_(0, sysi, 0.5 * state.masses * (v * v).sum(1))
    temp = 2.0 * ekin / (batch.dof.clamp(min=1) * KB_EV_PER_K)
    obs = Observation(state=state, bonds=batch.bonds, bond_sys=batch.bond_sys, r0_A=batch.r0, is_h=batch.is_h,
                      n_atoms=batch.n_atoms, pairs=pairs, temperature_K=temp, target_K=target, e_kin_eV=ekin,
                      e0_eV=e0, t_prev_K=t_prev)
    bad = torch.zeros(S, dtype=torch.long, device=x.device).index_add_(
        0, sysi, (~(torch.isfinite(x).all(1) & torch.isfinite(f).all(1) & torch.isfinite(v).all(1))).long())
    finite = (bad == 0) & torch.isfinite(state.energy)
    return torch.stack([state.energy, ekin, temp, target, *(OBSERVERS[k](obs) for k in LIVE), finite.to(f64)], 1)


def _setup(specs: list[TrajectorySpec], device: torch.device) -> tuple[_Batch, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate the trajectories: the batch constants, positions, velocities, masses."""
    pos, vel, masses, numbers, bonds, bond_sys, r0, dofs, natoms, limits, ramps = ([] for _ in range(11))
    offset = 0
    bonds_of: dict[int, np.ndarray] = {}
    for s, sp in enumerate(specs):
        atoms = sp.molecule.atoms
        mol_bonds = bonds_of.setdefault(id(sp.molecule), find_bonds(atoms))
        pos.append(atoms.positions)
        vel.append(sp.velocities)
        masses.append(atoms.get_masses())
        numbers.append(atoms.numbers)
        bonds.append(mol_bonds + offset)
        bond_sys.append(np.full(len(mol_bonds), s))
        p = atoms.positions
        r0.append(np.linalg.norm(p[mol_bonds[:, 0]] - p[mol_bonds[:, 1]], axis=1))
        # Langevin thermalises all 3N momenta (centre of mass and rotation too); NVE keeps 3N − 6.
        dofs.append(degrees_of_freedom(atoms) if sp.ramp is None else 3 * len(atoms))
        natoms.append(len(atoms))
        limits.append([sp.limits.get(k, -np.inf if CHECKS[k].lower else np.inf) for k in LIVE])
        r = sp.ramp
        ramps.append([r.start_K, r.end_K, r.ramp_steps, r.friction_per_ps / 1000.0] if r else [0, 0, 0, 0])
        offset += len(atoms)

    def t(x: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.concatenate(x) if isinstance(x[0], np.ndarray) else np.array(x),
                               dtype=dtype, device=device)

    f64 = torch.float64
    num = t(numbers, torch.long)
    batch = _Batch(numbers=num, orig=torch.arange(len(specs), device=device),
                   bonds=t(bonds, torch.long).reshape(-1, 2), bond_sys=t(bond_sys, torch.long), r0=t(r0, f64),
                   dof=t(dofs, f64), n_atoms=t(natoms, f64), is_h=num == 1, limits=t(limits, f64),
                   ramp=t(ramps, f64))
    return batch, np.concatenate(pos), np.concatenate(vel), np.concatenate(masses)


def run_batch(potential: Potential, specs: list[TrajectorySpec], *, timestep_fs: float, record_every: int = 10,
              neighbor_skin_A: float = 0.0, progress: ProgressFn | None = None,
              compile_at_step: int | None = None) -> list[Trajectory]:
    """Run every trajectory of ``specs`` in one batch, one model call per step.

    NVE trajectories use velocity Verlet; with any thermostatted trajectory the batch uses BAOAB,
    which is velocity Verlet for the NVE ones (γ = 0). Each thermostatted trajectory has its own
    noise stream (``TrajectorySpec.noise_seed``): a trajectory does not depend on its batch.
    With ``compile_at_step`` the potential's ``request_compile()`` is called before that step.

    Returns:
        One :class:`Trajectory` per spec, in order.
    """
    dev, n_max = potential.device, max(sp.n_steps for sp in specs)
    batch, pos, vel, masses = _setup(specs, dev)
    trajs = _trajectories(specs, batch, timestep_fs)
    sysi = torch.as_tensor(np.repeat(np.arange(len(specs)), batch.n_atoms.long().cpu().numpy()), device=dev)
    nl = NeighborList(sysi, potential.cutoff_A, neighbor_skin_A)

    def forces(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, j = nl.update(x)
        return potential(batch.numbers, x, nl.system_idx, batch.orig.numel(), i, j)

    x, v, m = (torch.as_tensor(a, dtype=torch.float64, device=dev) for a in (pos, vel, masses))
    state = md_init(x, v, m, sysi, forces)
    langevin = _thermostat(specs, batch, state, timestep_fs)
    dt = timestep_fs * FS
    e0: torch.Tensor | None = None
    t_prev: torch.Tensor | None = None
    last_steps = {sp.n_steps for sp in specs}
    active = [True] * len(specs)
    for step in range(n_max + 1):
        if step > 0:
            if step == compile_at_step and hasattr(potential, "request_compile"):
                potential.request_compile()
            if langevin is None:
                state = verlet_step(state, forces, dt)
            else:
                state = baoab_step(state, forces, dt, langevin, _targets_K(batch, step)[state.system_idx])
        if step % record_every and step not in last_steps:
            continue
        rows = _observe(state, batch, nl.update(state.positions), e0, t_prev, _targets_K(batch, step))
        keep = _record(rows, state, batch, step, specs, trajs, active)
        if e0 is None:
            e0 = rows[:, 0] + rows[:, 1]
        t_prev = rows[:, 2]
        if progress is not None:
            progress(step, n_max, list(active))
        if not keep.all():
            if not keep.any():
                break
            keep_t = torch.as_tensor(keep, device=dev)
            batch, atom_keep, new_sysi = batch.select(keep_t, state.system_idx)
            state = state.select(atom_keep, keep_t, new_sysi)
            langevin = langevin.select(keep.tolist(), atom_keep) if langevin is not None else None
            e0, t_prev = e0[keep_t], t_prev[keep_t]
            # Molecules do not interact: the survivors' forces stay valid, only pairs change.
            nl = NeighborList(new_sysi, potential.cutoff_A, neighbor_skin_A)
    return trajs


def _trajectories(specs: list[TrajectorySpec], batch: _Batch, timestep_fs: float) -> list[Trajectory]:
    """The empty records of ``specs``."""
    return [Trajectory(sp.molecule.name, sp.replica, len(sp.molecule.atoms), int(dof), sp.n_steps, timestep_fs,
                       sp.stage, hold_records=sp.hold_records)
            for sp, dof in zip(specs, batch.dof.tolist(), strict=True)]


def _thermostat(specs: list[TrajectorySpec], batch: _Batch, state: MDState, timestep_fs: float) -> Langevin | None:
    """The Langevin thermostat of a batch with any thermostatted trajectory (``None``: all NVE)."""
    if not bool((batch.ramp[:, 3] > 0).any()):
        return None
    noise = NoiseStreams([sp.noise_seed if sp.ramp is not None else None for sp in specs],
                         [len(sp.molecule.atoms) for sp in specs], state.positions.device)
    return Langevin.create(batch.ramp[:, 3][state.system_idx], state.masses, timestep_fs, noise)


def _record(rows: torch.Tensor, state: MDState, batch: _Batch, step: int, specs: list[TrajectorySpec],
            trajs: list[Trajectory], active: list[bool]) -> np.ndarray:
    """Append the record ``rows`` to each running trajectory and apply the live detectors;
    return which trajectories go on (a failed or finished one stops).
    """
    # One device→host transfer per record step.
    rows_np, limits_np = rows.cpu().numpy(), batch.limits.cpu().numpy()
    orig = batch.orig.cpu().numpy()
    keep = np.ones(len(orig), dtype=bool)
    snap = None
    for k, s in enumerate(orig):
        tr, sp = trajs[s], specs[s]
        ep, ek, tk, tt = rows_np[k, :4]
        vals = rows_np[k, 4:-1]
        tr.step.append(step)
        tr.e_pot_eV.append(float(ep))
        tr.e_kin_eV.append(float(ek))
        tr.temperature_K.append(float(tk))
        tr.target_temperature_K.append(float(tt))
        for name, value in zip(LIVE, vals, strict=True):
            tr.series.setdefault(name, []).append(float(value))
        tr.steps_done = step
        failure: tuple[str, float, int] | None = None
        if not rows_np[k, -1]:
            failure = ("finite", float("nan"), 0)
        else:
            failure = _crossed(tr, vals, limits_np[k])
        if failure is not None:
            at = tr.step[-1 - failure[2]]  # a held check failed where its excursion began
            tr.failure = Failure(failure[0], at, at * tr.timestep_fs * 1e-3, failure[1], float(tk),
                                 float(tt) if sp.ramp is not None else None)
        elif sp.frame_every and step and step % sp.frame_every == 0:
            if snap is None:
                snap = state.positions.detach().cpu().numpy()
            idx = (state.system_idx == k).nonzero().flatten().cpu().numpy()
            tr.frames.append((step, snap[idx].copy()))
        if failure is not None or step >= sp.n_steps:
            keep[k] = False
            active[s] = False
    return keep


def _crossed(tr: Trajectory, values: np.ndarray, bounds: np.ndarray) -> tuple[str, float, int] | None:
    """The first live check whose bound ``tr`` crossed at this record, as (check, value, records
    back to where it began); a held check only once the crossing lasted ``tr.hold_records``.
    """
    for name, value, bound in zip(LIVE, values, bounds, strict=True):
        over = (value < bound) if CHECKS[name].lower else (value > bound)
        if name not in HELD or tr.hold_records <= 1:
            if over:
                return name, float(value), 0
            continue
        run = tr.held_run.get(name, 0) + 1 if over else 0
        tr.held_run[name] = run
        if run >= tr.hold_records:
            return name, float(value), run - 1
    return None


def run_nve(
    potential: Potential, molecules: list[Molecule], *, n_replicas: int = 1, n_steps: int, timestep_fs: float,
    temperature_K: float, seed: int = 0, record_every: int = 10, limits: StopLimits | None = None,
    neighbor_skin_A: float = 0.0, progress: ProgressFn | None = None, compile_at_step: int | None = None,
    frame_every: int = 0,
) -> list[Trajectory]:
    """NVE MD (velocity Verlet) of every molecule × replica in one batch.

    Velocities are Maxwell–Boltzmann at exactly ``temperature_K`` with a seed per (``seed``,
    molecule, replica). A trajectory stops early when its positions, energy or forces become
    non-finite, or when it crosses one of ``limits`` (checked every ``record_every`` steps).

    Returns:
        One :class:`Trajectory` per molecule and replica, molecule-major.
    """
    specs = nve_specs(molecules, n_replicas=n_replicas, n_steps=n_steps, temperature_K=temperature_K, seed=seed,
                      limits=limits, frame_every=frame_every)
    return run_batch(potential, specs, timestep_fs=timestep_fs, record_every=record_every,
                     neighbor_skin_A=neighbor_skin_A, progress=progress, compile_at_step=compile_at_step)


def run_stress(
    potential: Potential, molecules: list[Molecule], *, n_replicas: int = 1, ramp: Ramp, n_steps: int,
    timestep_fs: float, seed: int = 1, record_every: int = 10, limits: StopLimits | None = None,
    neighbor_skin_A: float = 0.0, progress: ProgressFn | None = None, frame_every: int = 0,
) -> list[Trajectory]:
    """Langevin NVT (BAOAB) with a temperature ramp, every molecule × replica in one batch.

    The thermostat noise is seeded by ``seed`` too, per trajectory. Each trajectory runs ``n_steps`` unless a
    detector stops it; its :class:`Failure` gives the time to failure and the temperature reached.

    Returns:
        One :class:`Trajectory` per molecule and replica, molecule-major.
    """
    specs = stress_specs(molecules, n_replicas=n_replicas, ramp=ramp, n_steps=n_steps, seed=seed, limits=limits,
                         frame_every=frame_every)
    return run_batch(potential, specs, timestep_fs=timestep_fs, record_every=record_every,
                     neighbor_skin_A=neighbor_skin_A, progress=progress)
