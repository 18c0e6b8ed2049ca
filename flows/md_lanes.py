"""A gate's MD as lanes, whatever runs them: one executor interface, one driver.

A *lane* is a batch of molecules whose MD (NVE and heat stress, every replica) advances in one
model call per step (``mdgate.stages.md.run_md``); each lane is a Prefect task run of the gate
(``md-<molecule>[+<molecule>...]``). Three executors run lanes (:class:`MDExecutor`):

- ``local``: threads of the flow's process (``flows/md_executors.py``, :class:`ThreadLanes`);
- ``processes``: the same tasks, each waiting on a worker process of the gate's machine
  (:class:`ProcessLanes` over ``flows/md_processes.py``);
- ``dask``: tasks on a Dask cluster, one molecule each (``flows/dask_tasks.py``).

What is the same everywhere is written once:

- :class:`LaneGuard`, the progress callback every lane's MD runs with, wherever it runs: it stops
  the lane when another lane failed (abort) or when the lane ran past its deadline
  (``MDGATE_MD_TIMEOUT_S`` per molecule, counted from the lane's start), and passes the steps on
  to the gate's progress;
- :func:`run_lanes`, the driver: at most ``executor.slots`` lanes at a time, in order; the first
  real failure (not a lane stopped by the abort) is raised once every running lane has ended
  (fail-fast: the abort goes out at once); the progress of lanes that report from elsewhere is
  relayed, each finished lane's molecules are marked done, and the lease is renewed while MD runs.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from prefect import get_run_logger, task

from flows.tasks import ENGINE_TASK, call_with_deadline
from mdgate.config import GateConfig
from mdgate.errors import MDAbortedError, MDTimeoutError
from mdgate.molecules import Molecule
from mdgate.runner import configure_threads
from mdgate.stages.md import MoleculeRun, ProgressFn, run_md, split_lanes

#: Seconds between the driver's looks at its lanes (results, relayed progress, lease).
POLL_S = 1.0

#: ``(molecule, step, n_steps, running)``: a lane's progress, as ``mdgate.stages.md.ProgressFn`` gets it.
ProgressUpdate = tuple[str, int, int, bool]


class GateProgressSink(Protocol):
    """The gate's MD progress (``flows.progress.GateProgress``): steps, finished molecules, lease."""

    def __call__(self, molecule: str, step: int, n_steps: int, running: bool) -> None:
        """A molecule's lane reached ``step`` of ``n_steps`` (``running`` False: it stopped)."""
        ...

    def finish(self, molecule: str) -> None:
        """A molecule's lane ended."""
        ...

    def beat(self) -> None:
        """MD is still running (renews the lease when due)."""
        ...


class AbortSignal(Protocol):
    """Set when a lane of the gate failed: ``threading.Event``, or a flag other processes can read."""

    def is_set(self) -> bool:
        """Has another lane of the gate failed?"""
        ...


@dataclass(eq=False)
class Lane:
    """A batch of molecules run as one MD task (hashable by identity)."""

    molecules: list[Molecule]
    name: str
    """The task run's name (``md-<molecule>+<molecule>``)."""
    timeout_s: float
    """Its deadline from its start: ``MDGATE_MD_TIMEOUT_S`` times its molecules."""

    @property
    def names(self) -> list[str]:
        """Its molecules' names, in order."""
        return [m.name for m in self.molecules]


@dataclass
class LaneGuard:
    """The progress callback of a lane's MD: abort, deadline, then progress (picklable when its
    ``abort`` and ``progress`` are: a Dask lane carries it to its worker).
    """

    abort: AbortSignal
    timeout_s: float
    progress: ProgressFn | None = None
    deadline: float = field(default=float("inf"))

    def start(self) -> None:
        """The lane starts now: its deadline is ``timeout_s`` from here."""
        self.deadline = time.monotonic() + self.timeout_s

    @property
    def hard_timeout_s(self) -> float:
        """How long a lane may take when its model stops calling back (it hangs): a little more than
        ``timeout_s``, so that a lane that does call back ends on the step check, with the step in its message.
        """
        return self.timeout_s * 1.1 + 1

    def __call__(self, name: str, step: int, n_steps: int, running: bool) -> None:
        """``mdgate.stages.md.ProgressFn``.

        Raises:
            MDAbortedError: another lane of the gate failed.
            MDTimeoutError: the lane ran past its deadline.
        """
        if self.abort.is_set():
            raise MDAbortedError(f"MD of {name} stopped: another molecule failed")
        if time.monotonic() > self.deadline:
            raise MDTimeoutError(f"MD of {name} timed out after {self.timeout_s:g} s (step {step} of {n_steps})")
        if self.progress is not None:
            self.progress(name, step, n_steps, running)


class LanePool(Protocol):
    """Runs a lane's MD elsewhere while the task waits (``flows.md_processes.MDProcessPool``)."""

    def run(self, molecules: list[Molecule], config: GateConfig, tick: ProgressFn) -> list[MoleculeRun]:
        """The lane's runs; ``tick`` is called while it waits, and stops the lane when it raises."""
        ...


@task(name="md", **ENGINE_TASK)
def md_lane(potential: Any, molecules: list[Molecule], config: GateConfig, threads: int, guard: LaneGuard,
            pool: LanePool | None = None) -> list[MoleculeRun]:
    """The MD stages (NVE and heat stress) of a lane of molecules, all their replicas in one batch;
    one ``MoleculeRun`` per molecule. With a ``pool`` the MD runs in one of its worker processes and
    this task waits for it, calling ``guard`` with the worker's progress.

    The guard is called at every MD step (a thread cannot be interrupted from outside); a model
    that stops calling back is cut off at ``guard.hard_timeout_s``.
    """
    configure_threads(threads)
    guard.start()
    names = "+".join(m.name for m in molecules)
    get_run_logger().info("MD of %s (%d atoms, %d replicas, %d NVE + %d stress steps) in process %d on %s",
                          names, sum(len(m.atoms) for m in molecules), config.md.n_replicas,
                          config.md.n_steps if config.md.enabled else 0,
                          config.stress.n_steps if config.stress.enabled else 0, os.getpid(), socket.gethostname())
    if pool is not None:  # the task polls its worker: the guard holds even if the model hangs
        return pool.run(molecules, config, guard)
    return call_with_deadline(lambda: run_md(potential, molecules, config, guard), guard.hard_timeout_s,
                              f"MD of {names}")


class MDExecutor(Protocol):
    """Where a gate's lanes run. A context manager: what it starts (workers, a cluster) ends with it."""

    slots: int
    """Lanes running at once."""

    def __enter__(self) -> MDExecutor:
        """Start what runs the lanes."""
        ...

    def __exit__(self, *exc: object) -> None:
        """Stop it (at once for lanes told to stop: a model may hang)."""
        ...

    def submit(self, lane: Lane) -> None:
        """Start a lane (as a task run of the gate, named ``lane.name``)."""
        ...

    def wait(self, timeout_s: float) -> list[Lane]:
        """The submitted lanes that ended, waiting up to ``timeout_s`` for one."""
        ...

    def result(self, lane: Lane) -> list[MoleculeRun]:
        """An ended lane's runs, one per molecule; raises its error."""
        ...

    def abort(self) -> None:
        """Tell the running lanes to stop at their next step."""
        ...

    def progress(self) -> list[ProgressUpdate]:
        """Progress the running lanes reported from elsewhere since the last call (none when
        they report to the gate's progress themselves).
        """
        ...


def run_lanes(executor: MDExecutor, lanes: list[Lane], progress: GateProgressSink,
              poll_s: float = POLL_S) -> dict[str, MoleculeRun]:
    """Run ``lanes`` on ``executor``, at most ``executor.slots`` at a time, in order; return each
    molecule's run by name.

    Raises:
        MdgateError: the first lane that failed (timed out, or the model failed during MD); the
            other lanes were stopped and have ended.
    """
    pending = list(lanes)
    running: set[Lane] = set()
    runs: dict[str, MoleculeRun] = {}
    failure: BaseException | None = None
    with executor:
        while (pending and failure is None) or running:
            while pending and failure is None and len(running) < executor.slots:
                lane = pending.pop(0)
                executor.submit(lane)
                running.add(lane)
            for lane in executor.wait(poll_s):
                running.discard(lane)
                try:
                    runs.update(zip(lane.names, executor.result(lane), strict=True))
                except BaseException as e:
                    if failure is None or isinstance(failure, MDAbortedError):
                        failure = e
                    executor.abort()  # the others stop at their next step; wait for them, then fail
                else:
                    for name in lane.names:
                        progress.finish(name)
            for update in executor.progress():
                progress(*update)
            progress.beat()  # renews the lease when due, also while no lane reports
    if failure is not None:
        raise failure
    return runs


def plan_lanes(molecules: list[Molecule], batch: Literal["lanes", "molecule"], n_lanes: int) -> list[list[Molecule]]:
    """The gate's lanes: ``n_lanes`` of about equal atoms (``batch="lanes"``), or one molecule
    each, largest first (``batch="molecule"``).
    """
    if batch == "lanes":
        return split_lanes(molecules, n_lanes)
    # Largest first: the last task to start is a short one, and no lane idles long at the end.
    return [[m] for m in sorted(molecules, key=lambda m: len(m.atoms), reverse=True)]


def make_lanes(batches: list[list[Molecule]], prefix: str, timeout_s: float) -> list[Lane]:
    """One :class:`Lane` per batch, named ``<prefix>-<molecule>+...``, with ``timeout_s`` per molecule."""
    return [Lane(b, f"{prefix}-{'+'.join(m.name for m in b)}", timeout_s * len(b)) for b in batches]


def steps_per_molecule(config: GateConfig) -> int:
    """MD steps a molecule's lane reports: the longer of NVE and heat stress (they run in one batch)."""
    return max(config.md.n_steps if config.md.enabled else 0, config.stress.n_steps if config.stress.enabled else 0, 1)
