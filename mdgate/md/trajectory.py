"""What a batch of MD runs on and what it records: trajectory specifications (molecule,
replica, length, thermostat ramp, stop limits) and the recorded :class:`Trajectory`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mdgate.checks.table import held_checks, live_checks
from mdgate.md.initial import maxwell_boltzmann, noise_seed, replica_seed
from mdgate.molecules import Molecule


class StopLimits(dict[str, float]):
    """Bounds at which a trajectory is stopped early: live check name → bound (absent: not
    checked live). Non-finite energies, forces or positions always stop a trajectory.

    Keys are the live checks of :mod:`mdgate.checks.table` (``stops_md``); each is compared in
    the table's direction (``min_distance_A`` is a lower bound, the others upper bounds).
    """

    def __init__(self, **bounds: float | None) -> None:
        unknown = sorted(set(bounds) - set(LIVE))
        if unknown:
            raise KeyError(f"not live checks of the table: {unknown}; live: {LIVE}")
        super().__init__({k: float(v) for k, v in bounds.items() if v is not None})


#: The live checks, in the order of the record matrix columns after the energies.
LIVE = live_checks()
#: The live checks judged on what a run held (``CheckSpec.held``).
HELD = frozenset(held_checks())


def sustained(values: list[float] | np.ndarray, window: int, lower: bool = False) -> float | None:
    """The worst level a series held for ``window`` consecutive records: the largest value that
    every record of some window reached (``lower``: the smallest value no record of some window
    exceeded). ``window`` 1 is the plain maximum (minimum). NaN records are skipped; ``None`` when
    the series is shorter than the window.

    A bond stretched beyond a bound for one record is a vibration's overshoot; one stretched for
    ``window`` records in a row has broken.
    """
    arr = np.asarray(values, float)
    arr = arr[~np.isnan(arr)]
    if window < 1 or arr.size < window:
        return None
    view = np.lib.stride_tricks.sliding_window_view(arr, window)
    return float(view.max(axis=1).min()) if lower else float(view.min(axis=1).max())


@dataclass
class Failure:
    """Why and when a trajectory stopped early (temperatures in K at that record)."""

    check: str
    step: int
    time_ps: float
    value: float
    temperature_K: float | None = None
    target_temperature_K: float | None = None


@dataclass
class Trajectory:
    """Recorded observables of one trajectory, every ``record_every`` steps.

    Energies in eV, temperature in K; the live checks' series in their table units. ``frames`` are
    ``(step, positions [n_atoms, 3] Å)`` snapshots for the oracle stage.
    """

    molecule: str
    replica: int
    n_atoms: int
    dof: int
    steps_asked: int
    timestep_fs: float
    stage: str = "nve"
    steps_done: int = 0
    step: list[int] = field(default_factory=list)
    e_pot_eV: list[float] = field(default_factory=list)
    e_kin_eV: list[float] = field(default_factory=list)
    temperature_K: list[float] = field(default_factory=list)
    target_temperature_K: list[float] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)
    """Each live check's value at every record (the table's ``stops_md`` checks), by check name."""
    frames: list[tuple[int, np.ndarray]] = field(default_factory=list)
    failure: Failure | None = None
    hold_records: int = 1
    """Consecutive records a held check's bound must stay crossed (the stage's ``hold_fs``)."""
    held_run: dict[str, int] = field(default_factory=dict)
    """Consecutive records so far beyond its bound, per held check (the live detector's state)."""

    @property
    def time_ps(self) -> np.ndarray:
        """Record times in ps."""
        return np.asarray(self.step, dtype=float) * self.timestep_fs * 1e-3

    @property
    def e_tot_eV(self) -> np.ndarray:
        """Total energy in eV."""
        return np.asarray(self.e_pot_eV) + np.asarray(self.e_kin_eV)


@dataclass(frozen=True)
class Ramp:
    """A Langevin thermostat whose target goes linearly from ``start_K`` to ``end_K`` over
    ``ramp_steps``, then stays at ``end_K``.
    """

    start_K: float
    end_K: float
    ramp_steps: int
    friction_per_ps: float

    def target_K(self, step: int) -> float:
        """The target temperature at ``step``."""
        if self.ramp_steps <= 0:
            return self.end_K
        return self.start_K + (self.end_K - self.start_K) * min(step / self.ramp_steps, 1.0)


@dataclass
class TrajectorySpec:
    """One trajectory to run: molecule, replica, length, stop limits and thermostat.

    ``ramp`` ``None`` is NVE; a thermostatted trajectory draws its noise from its own
    generator seeded by ``noise_seed``. ``frame_every`` > 0 keeps a positions snapshot every that many
    steps (a multiple of the record interval) for the oracle stage.
    """

    molecule: Molecule
    replica: int
    n_steps: int
    velocities: np.ndarray
    limits: StopLimits
    ramp: Ramp | None = None
    frame_every: int = 0
    noise_seed: int = 0
    hold_records: int = 1
    """A held check (:func:`~mdgate.checks.table.held_checks`) stops the trajectory when its bound
    stays crossed for this many consecutive records (1: at the first)."""

    @property
    def stage(self) -> str:
        """``nve`` or ``stress``."""
        return "nve" if self.ramp is None else "stress"


ProgressFn = Callable[[int, int, list[bool]], None]


def _stop_limits(limits: StopLimits | None) -> StopLimits:
    return limits if limits is not None else StopLimits()


def hold_records(hold_fs: float, timestep_fs: float, record_every: int) -> int:
    """Consecutive records that span ``hold_fs`` (1 when it is 0)."""
    return 1 + max(0, round(hold_fs / (timestep_fs * record_every)))


def nve_specs(molecules: list[Molecule], *, n_replicas: int, n_steps: int, temperature_K: float, seed: int,
              limits: StopLimits | None = None, frame_every: int = 0, first_replica: int = 0,
              hold: int = 1) -> list[TrajectorySpec]:
    """The NVE trajectories of ``molecules`` × replicas ``first_replica`` … ``+ n_replicas``, molecule-major."""
    return [TrajectorySpec(mol, r, n_steps, maxwell_boltzmann(
                mol.atoms, temperature_K, np.random.default_rng(replica_seed(seed, mol.name, r))),
                _stop_limits(limits), None, frame_every, hold_records=hold)
            for mol in molecules for r in range(first_replica, first_replica + n_replicas)]


def stress_specs(molecules: list[Molecule], *, n_replicas: int, ramp: Ramp, n_steps: int, seed: int,
                 limits: StopLimits | None = None, frame_every: int = 0, first_replica: int = 0,
                 hold: int = 1) -> list[TrajectorySpec]:
    """The heat-stress trajectories: velocities at ``ramp.start_K`` and thermostat noise, both from
    the stage's own seed per (molecule, replica).
    """
    return [TrajectorySpec(mol, r, n_steps, maxwell_boltzmann(
                mol.atoms, ramp.start_K, np.random.default_rng(replica_seed(seed, mol.name, r))),
                _stop_limits(limits), ramp, frame_every, noise_seed(seed, mol.name, r), hold_records=hold)
            for mol in molecules for r in range(first_replica, first_replica + n_replicas)]
