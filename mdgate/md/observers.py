"""Live observers: the value of each live check (``stops_md`` in :mod:`mdgate.checks.table`)
for every system of a batch, at every record step.

An observer is a function of an :class:`Observation` returning one value per system
(``[n_systems]`` float64). The batch runner records each live check's series and stops a
trajectory when a value crosses the check's bound in the table's direction; adding a live check
is a row in the table plus one function here, registered with :func:`observer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from mdgate.checks.table import CHECKS, H_LOSS_DISTANCE_A, live_checks
from mdgate.md.integrators import MDState

ObserverFn = Callable[["Observation"], torch.Tensor]

#: The observer of each live check, by check name.
OBSERVERS: dict[str, ObserverFn] = {}


def observer(name: str) -> Callable[[ObserverFn], ObserverFn]:
    """Register the function that measures live check ``name`` (a row of the table with ``stops_md``).

    Raises:
        KeyError: ``name`` is not a live check of the table.
    """
    if name not in CHECKS or not CHECKS[name].stops_md:
        raise KeyError(f"{name!r} is not a live check of the table (stops_md); live: {live_checks()}")

    def register(fn: ObserverFn) -> ObserverFn:
        OBSERVERS[name] = fn
        return fn

    return register


def per_system(values: torch.Tensor, idx: torch.Tensor, n: int, how: str, empty: float) -> torch.Tensor:
    """Reduce per-item ``values`` to ``n`` groups by ``idx`` (``how``: ``amax``, ``amin``, ``sum``)."""
    out = torch.full((n,), empty, dtype=values.dtype, device=values.device)
    if values.numel():
        out.scatter_reduce_(0, idx, values, how, include_self=True)
    return out


@dataclass
class Observation:
    """One record step of a batch: the state and what the observers share.

    Attributes:
        state: positions (Å), velocities, forces (eV/Å), energies (eV) of every atom/system.
        bonds: ``[n_bonds, 2]`` atom indices of the bonds perceived at t = 0.
        bond_sys: system of each bond.
        r0_A: each bond's length at t = 0 (Å).
        is_h: per atom, whether it is hydrogen.
        n_atoms: atoms per system (float64).
        pairs: ``(i, j)`` neighbour pairs within the model's cutoff.
        temperature_K: per system.
        target_K: thermostat target per system (0 for NVE).
        e_kin_eV: kinetic energy per system.
        e0_eV: total energy per system at the first record (``None`` at the first record).
        t_prev_K: temperature at the previous record (``None`` at the first record).
    """

    state: MDState
    bonds: torch.Tensor
    bond_sys: torch.Tensor
    r0_A: torch.Tensor
    is_h: torch.Tensor
    n_atoms: torch.Tensor
    pairs: tuple[torch.Tensor, torch.Tensor]
    temperature_K: torch.Tensor
    target_K: torch.Tensor
    e_kin_eV: torch.Tensor
    e0_eV: torch.Tensor | None
    t_prev_K: torch.Tensor | None

    @property
    def n_systems(self) -> int:
        """Systems in the batch."""
        return int(self.n_atoms.numel())

    @property
    def thermostatted(self) -> torch.Tensor:
        """Per system, whether a thermostat holds it (NVE systems have target 0 K)."""
        return self.target_K > 0

    def zeros(self) -> torch.Tensor:
        """``[n_systems]`` zeros of the state's dtype and device."""
        x = self.state.positions
        return torch.zeros(self.n_systems, dtype=x.dtype, device=x.device)

    @cached_property
    def nearest_A(self) -> torch.Tensor:
        """Per atom, the distance to its nearest neighbour within the cutoff (inf: none in range)."""
        x = self.state.positions
        i, j = self.pairs
        return per_system((x[i] - x[j]).norm(dim=1), i, x.shape[0], "amin", float("inf"))


@observer("max_force_eV_per_A")
def _max_force(o: Observation) -> torch.Tensor:
    f = o.state.forces
    return per_system(f.abs().amax(1), o.state.system_idx, o.n_systems, "amax", 0.0)


@observer("max_temperature_K")
def _temperature(o: Observation) -> torch.Tensor:
    return o.temperature_K


@observer("max_temperature_excess_K")
def _temperature_excess(o: Observation) -> torch.Tensor:
    # Defined under a thermostat only (NVE systems have target 0): NaN never stops a trajectory.
    return torch.where(o.thermostatted, o.temperature_K - o.target_K, torch.nan)


@observer("temperature_jump_factor")
def _temperature_jump(o: Observation) -> torch.Tensor:
    # The first record compares with itself: a factor of 1.
    prev = o.temperature_K if o.t_prev_K is None else o.t_prev_K
    return o.temperature_K / prev.clamp(min=1.0)


@observer("max_bond_deviation_A")
def _bond_deviation(o: Observation) -> torch.Tensor:
    if not o.bonds.numel():
        return o.zeros()
    x = o.state.positions
    d = (x[o.bonds[:, 0]] - x[o.bonds[:, 1]]).norm(dim=1)
    return per_system((d - o.r0_A).abs(), o.bond_sys, o.n_systems, "amax", 0.0)


@observer("min_distance_A")
def _min_distance(o: Observation) -> torch.Tensor:
    return per_system(o.nearest_A, o.state.system_idx, o.n_systems, "amin", float("inf"))


@observer("isolated_h_atoms")
def _lost_h(o: Observation) -> torch.Tensor:
    lost = (o.is_h & ~(o.nearest_A <= H_LOSS_DISTANCE_A)).to(o.state.positions.dtype)
    return o.zeros().index_add_(0, o.state.system_idx, lost)


@observer("max_energy_deviation_meV_per_atom")
def _energy_deviation(o: Observation) -> torch.Tensor:
    # Conserved in NVE only: undefined (NaN) under a thermostat.
    etot = o.state.energy + o.e_kin_eV
    e0 = etot if o.e0_eV is None else o.e0_eV
    return torch.where(o.thermostatted, torch.nan, (etot - e0).abs() / o.n_atoms * 1000.0)
