"""The gate's per-molecule MD tasks on a Dask cluster (``MDGATE_TASK_RUNNER=dask``), through
prefect-dask's ``DaskTaskRunner``: :class:`DaskLanes`, an executor of ``flows.md_lanes`` (whose
driver, ``run_lanes``, owns the abort, the first failure and the progress as for the other two).

The gate flow runs where its work pool started it; only its MD tasks go to the cluster, each in
a Dask worker process (on GPU nodes: one worker per GPU, started with ``--resources GPU=1``, and
``MDGATE_DASK_RESOURCES='{"GPU": 1}'``). The cluster is the one at ``MDGATE_DASK_ADDRESS``, else
one the gate starts for itself from ``MDGATE_DASK_CLUSTER_CLASS`` / ``MDGATE_DASK_CLUSTER_KWARGS``
(``distributed.LocalCluster`` by default).

What the local path shares between the threads of one process crosses processes here:

- the potential, the molecule and the config are pickled into each task (a model of a million
  parameters is a few MB);
- stop-on-failure: a ``distributed.Event`` per gate (:class:`AbortFlag`), which the lanes' guards
  poll at most once a second;
- progress: each task publishes its step at most every 2 s as scheduler metadata of its own Dask
  task (:class:`ProgressReporter`; removed with the task); :meth:`DaskLanes.progress` reads them
  and the driver relays them to the gate's progress artifact, as for the other executors.

Prefect still records every MD task as a task run of the gate (``md-<molecule>``, tagged with
``MDGATE_GPU_TAG``), so the tag concurrency limit bounds GPU work over all gates and clusters.
The ``dask`` extra of the project installs prefect-dask; nothing here imports it (nor dask or
distributed) until a gate uses it: the imports stay inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from prefect import Task
from prefect.logging import get_logger

from flows.md_lanes import Lane, LaneGuard, ProgressUpdate
from flows.settings import Settings
from mdgate.config import GateConfig
from mdgate.stages.md import MoleculeRun

logger = get_logger("mdgate.dask")

class DaskUnavailableError(RuntimeError):
    """The Dask cluster could not be reached or started: an outage, not a verdict on the model.

    The gate fails and leaves the version Running, like a registry outage; the sweep gates it
    again when its lease expires.
    """


class AbortFlag:
    """``threading.Event.is_set`` of the local path over a named ``distributed.Event``.

    Polled at most every ``poll_s`` (each look is a round trip to the scheduler); once set it
    stays set. Pickled by name: it works in any process that can reach the scheduler.
    """

    def __init__(self, name: str, poll_s: float = 1.0):
        self.name = name
        self.poll_s = poll_s
        self._set = False
        self._last = float("-inf")

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "poll_s": self.poll_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["poll_s"])  # type: ignore[misc]

    def is_set(self) -> bool:
        """Has another task of the gate failed?"""
        now = time.monotonic()
        if not self._set and now - self._last >= self.poll_s:
            self._last = now
            import distributed  # optional (the dask extra): imported where a gate uses it

            try:
                self._set = distributed.Event(self.name).is_set()
            except Exception as e:  # scheduler unreachable: the task runs on (its timeout still holds)
                logger.debug("abort flag %s unreadable: %s", self.name, e)
        return self._set


#: Scheduler metadata key, under the MD task's Dask key, of its ``[step, n_steps, running]``.
PROGRESS_KEY = "mdgate-progress"


class ProgressReporter:
    """The MD task's progress callback on a Dask worker: publishes ``[step, n_steps, running]``
    as scheduler metadata of its Dask task (``[task_key, PROGRESS_KEY]``: the scheduler drops it
    with the task), at most every ``every_s``, and when a trajectory stops.

    The task key is given, not looked up: the engine may call back from a thread of its own.
    """

    def __init__(self, task_key: str, every_s: float = 2.0):
        self.task_key = task_key
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"task_key": self.task_key, "every_s": self.every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["task_key"], state["every_s"])  # type: ignore[misc]

    def __call__(self, molecule: str, step: int, n_steps: int, running: bool) -> None:
        """``mdgate.stages.md.ProgressFn``."""
        now = time.monotonic()
        if running and now - self._last.get(molecule, float("-inf")) < self.every_s:
            return
        self._last[molecule] = now
        import distributed  # optional (the dask extra): imported where a gate uses it

        try:
            distributed.get_client().set_metadata([self.task_key, PROGRESS_KEY], [step, n_steps, running])
        except Exception as e:  # progress is cosmetic: never fail MD for it
            logger.debug("progress of %s not published: %s", molecule, e)


def task_runner(settings: Settings) -> Any:
    """The ``DaskTaskRunner`` the settings describe (not started)."""
    try:
        from prefect_dask import DaskTaskRunner  # optional (the dask extra)
    except ImportError as e:
        raise DaskUnavailableError(
            "MDGATE_TASK_RUNNER=dask needs prefect-dask: pip install 'mdgate[dask]'") from e
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_class=settings.dask_cluster_class,
                          cluster_kwargs=dict(settings.dask_cluster_kwargs))


class DaskLanes:
    """Lanes (one molecule each) as MD tasks on the Dask cluster the settings name; all are
    submitted at once (``slots``: every lane), the cluster's worker slots and Dask resources bound
    how many run together. A context manager: the cluster (or the connection to it) ends with it.

    Raises:
        DaskUnavailableError: on entering, when the cluster cannot be reached or started.
    """

    def __init__(self, settings: Settings, md_task: Task[..., list[MoleculeRun]], potential: Any,
                 config: GateConfig, n_lanes: int):
        self.settings = settings
        self.md_task = md_task
        self.potential = potential
        self.config = config
        self.slots = max(1, n_lanes)
        self._gate_id = uuid.uuid4().hex[:12]
        self._flag = AbortFlag(f"mdgate-abort-{self._gate_id}")
        self._futures: dict[Lane, Any] = {}
        self._seen: dict[str, tuple[int, int, bool]] = {}
        self._stack = contextlib.ExitStack()
        self._client: Any = None

    def __enter__(self) -> DaskLanes:
        runner = self._stack.enter_context(task_runner(self.settings))
        where = self.settings.dask_address or self.settings.dask_cluster_class
        try:
            self._client = runner.client
        except Exception as e:
            self._stack.close()
            raise DaskUnavailableError(f"Dask cluster {where} unavailable: {type(e).__name__}: {e}") from e
        self._stack.callback(self._clear_flag)
        logger.info("MD of %d molecules on Dask %s (%d workers)", self.slots, where,
                    len(self._client.scheduler_info().get("workers", {})))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _event(self) -> Any:
        import distributed  # optional (the dask extra)

        return distributed.Event(self._flag.name, client=self._client)

    def _clear_flag(self) -> None:
        with contextlib.suppress(Exception):
            self._event().clear()

    def submit(self, lane: Lane) -> None:
        """``DaskTaskRunner.submit``, with a Dask key of our own for the lane's progress metadata."""
        import dask  # optional (the dask extra)
        from prefect_dask.task_runners import PrefectDaskFuture

        key = f"mdgate-md-{self._gate_id}-{'+'.join(lane.names)}"
        resources = dict(self.settings.dask_resources)
        with dask.annotate(resources=resources) if resources else contextlib.nullcontext():
            future = self._client.submit(
                self.md_task.with_options(task_run_name=lane.name), key=key, pure=False,
                parameters={"potential": self.potential, "molecules": lane.molecules, "config": self.config,
                            "threads": self.settings.dask_md_threads,
                            "guard": LaneGuard(self._flag, lane.timeout_s, ProgressReporter(key))},
                return_type="state",
            )
        self._futures[lane] = PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)

    def wait(self, timeout_s: float) -> list[Lane]:
        """The lanes whose task ended (up to ``timeout_s`` for the first)."""
        until = time.monotonic() + timeout_s
        while True:
            done = [lane for lane, f in self._futures.items() if f.wrapped_future.done()]
            if done or time.monotonic() >= until:
                return done
            time.sleep(0.05)

    def result(self, lane: Lane) -> list[MoleculeRun]:
        """The lane's runs (its task's error raised)."""
        return self._futures.pop(lane).result()

    def abort(self) -> None:
        """Set the gate's abort flag: the lanes' guards see it within a second."""
        self._event().set()

    def progress(self) -> list[ProgressUpdate]:
        """The steps the running lanes published since the last look (scheduler metadata)."""
        out: list[ProgressUpdate] = []
        for lane, future in self._futures.items():
            try:
                published = self._client.get_metadata([future.wrapped_future.key, PROGRESS_KEY], default=None)
            except Exception as e:  # progress is cosmetic
                logger.debug("progress of %s unreadable: %s", lane.name, e)
                continue
            if not published:  # not started yet
                continue
            step, n_steps, running = int(published[0]), int(published[1]), bool(published[2])
            [name] = lane.names  # one molecule per Dask lane
            if self._seen.get(name) != (step, n_steps, running):
                self._seen[name] = (step, n_steps, running)
                out.append((name, step, n_steps, running))
        return out
