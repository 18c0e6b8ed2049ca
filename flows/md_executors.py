"""The executors of a gate's MD lanes on the gate's own machine, and the choice among the three
(``MDGATE_TASK_RUNNER``): :class:`ThreadLanes` (``local``), :class:`ProcessLanes` (``processes``,
the default) and ``flows.dask_tasks.DaskLanes`` (``dask``). The driver is
``flows.md_lanes.run_lanes``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture, PrefectWrappedFuture

from flows.dask_tasks import DaskLanes
from flows.md_lanes import Lane, LaneGuard, LanePool, MDExecutor, ProgressUpdate, make_lanes, plan_lanes
from flows.md_processes import MDProcessPool
from flows.progress import GateProgress
from flows.settings import Settings
from mdgate.config import GateConfig
from mdgate.molecules import Molecule
from mdgate.stages.md import MoleculeRun


def _concurrent(future: PrefectFuture[Any]) -> concurrent.futures.Future[Any]:
    """The ``concurrent.futures`` future under a Prefect future of the thread pool task runner."""
    if not isinstance(future, PrefectWrappedFuture) or not isinstance(future.wrapped_future,
                                                                      concurrent.futures.Future):
        raise TypeError(f"an MD task future of Prefect's thread pool task runner expected, got {type(future)}")
    return future.wrapped_future


class ThreadLanes:
    """Lanes as MD tasks in threads of the flow's process (the flow's task runner), at most
    ``slots`` at once; each lane's guard reports to the gate's progress itself.
    """

    def __init__(self, md_task: Task[..., list[MoleculeRun]], potential: Any, config: GateConfig, threads: int,
                 slots: int, progress: GateProgress):
        self.md_task = md_task
        self.potential = potential
        self.config = config
        self.threads = threads
        self.slots = slots
        self.gate_progress = progress
        self._abort = threading.Event()
        self._futures: dict[Lane, PrefectFuture[list[MoleculeRun]]] = {}
        self._pool: LanePool | None = None

    def __enter__(self) -> ThreadLanes:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, lane: Lane) -> None:
        """Start the lane's MD task."""
        guard = LaneGuard(self._abort, lane.timeout_s, self.gate_progress)
        self._futures[lane] = self.md_task.with_options(task_run_name=lane.name).submit(
            self.potential, lane.molecules, self.config, self.threads, guard, self._pool)

    def wait(self, timeout_s: float) -> list[Lane]:
        """The lanes whose task ended (up to ``timeout_s`` for the first)."""
        by_future = {_concurrent(f): lane for lane, f in self._futures.items()}
        done, _ = concurrent.futures.wait(list(by_future), timeout=timeout_s,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        return [by_future[f] for f in done]

    def result(self, lane: Lane) -> list[MoleculeRun]:
        """The lane's runs (its task's error raised)."""
        return self._futures.pop(lane).result()

    def abort(self) -> None:
        """Running lanes stop at their next step (their guards read the event)."""
        self._abort.set()

    def progress(self) -> list[ProgressUpdate]:
        """None to relay: the guards report to the gate's progress from the lanes' threads."""
        return []


class ProcessLanes(ThreadLanes):
    """Lanes as MD tasks that each wait on a worker process of a pool the gate starts
    (``flows/md_processes.py``): no interpreter lock shared between lanes.
    """

    def __enter__(self) -> ProcessLanes:
        self._process_pool = MDProcessPool(self.potential, self.slots, self.threads)
        self._pool = self._process_pool
        return self

    def __exit__(self, *exc: object) -> None:
        self._process_pool.close()


def executor_for(settings: Settings, md_task: Task[..., list[MoleculeRun]], potential: Any, config: GateConfig,
                 molecules: list[Molecule], progress: GateProgress,
                 prefix: str = "md") -> tuple[MDExecutor, list[Lane]]:
    """The executor ``settings.task_runner`` names, and the lanes it runs.

    ``local`` and ``processes``: ``md_parallel`` lanes at once, cut by ``md_batch``
    (``flows.md_lanes.plan_lanes``), ``cores // md_parallel`` torch threads each. ``dask``: one
    lane per molecule, all submitted at once (the cluster bounds how many run).
    """
    if settings.task_runner == "dask":
        lanes = make_lanes([[m] for m in molecules], prefix, settings.md_timeout_s)
        return DaskLanes(settings, md_task, potential, config, len(lanes)), lanes
    slots = min(settings.md_parallel, len(molecules))
    threads = settings.md_threads(slots)
    lanes = make_lanes(plan_lanes(molecules, settings.md_batch, settings.md_parallel), prefix, settings.md_timeout_s)
    kind = ProcessLanes if settings.task_runner == "processes" else ThreadLanes
    return kind(md_task, potential, config, threads, slots, progress), lanes
