"""The gate's per-molecule MD tasks on a Dask cluster (``MDGATE_TASK_RUNNER=dask``), through
prefect-dask's ``DaskTaskRunner``.

The gate flow runs where its work pool started it; only its MD tasks go to the cluster, each in
a Dask worker process (on GPU nodes: one worker per GPU, started with ``--resources GPU=1``, and
``MDGATE_DASK_RESOURCES='{"GPU": 1}'``). The cluster is the one at ``MDGATE_DASK_ADDRESS``, else
one the gate starts for itself from ``MDGATE_DASK_CLUSTER_CLASS`` / ``MDGATE_DASK_CLUSTER_KWARGS``
(``distributed.LocalCluster`` by default).

What the local path shares between the threads of one process crosses processes here:

- the potential, the molecule and the config are pickled into each task (a model of a million
  parameters is a few MB);
- stop-on-failure: a ``distributed.Event`` per gate, which the MD tasks poll at most once a second;
- progress: each task publishes its step at most every 2 s as scheduler metadata of its own Dask
  task (removed with the task); the flow reads them into the gate's progress artifact, which also
  renews the lease, as in the local path.

Prefect still records every MD task as a task run of the gate (``md-<molecule>``, tagged with
``MDGATE_GPU_TAG``), so the tag concurrency limit bounds GPU work over all gates and clusters.
The ``dask`` extra of the project installs prefect-dask; nothing here imports it until a gate
uses it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from prefect.logging import get_logger

logger = get_logger("mdgate.dask")

#: Seconds between the flow's looks at its MD tasks (results, progress, lease).
POLL_S = 1.0


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
            import distributed

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
        import distributed

        try:
            distributed.get_client().set_metadata([self.task_key, PROGRESS_KEY], [step, n_steps, running])
        except Exception as e:  # progress is cosmetic: never fail MD for it
            logger.debug("progress of %s not published: %s", molecule, e)

    def finish(self, molecule: str) -> None:
        """The flow marks a molecule done when its task's result arrives."""


def task_runner(settings: Any) -> Any:
    """The ``DaskTaskRunner`` the settings describe (not started)."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:
        raise DaskUnavailableError(
            "MDGATE_TASK_RUNNER=dask needs prefect-dask: pip install 'mdgate[dask]'") from e
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_class=settings.dask_cluster_class,
                          cluster_kwargs=dict(settings.dask_cluster_kwargs))


def run_on_dask(settings: Any, md_task: Any, potential: Any, molecules: list[Any], config: Any,
                progress: Any, aborted: type[BaseException]) -> list[Any]:
    """Run one MD task per molecule on the Dask cluster; return their results in molecule order.

    All molecules are submitted at once: the cluster's worker slots (and Dask resources) bound
    how many run together. When one task fails, the others stop at their next look at the abort
    flag; the first real failure (not ``aborted``) is raised once all have ended.

    Raises:
        DaskUnavailableError: the cluster cannot be reached or started.
        MdgateError: a task timed out or the model failed during MD.
    """
    import dask
    import distributed
    from prefect_dask.task_runners import PrefectDaskFuture

    runner = task_runner(settings)
    gate_id = uuid.uuid4().hex[:12]
    flag = AbortFlag(f"mdgate-abort-{gate_id}")
    with runner:
        try:
            client = runner.client
        except Exception as e:
            where = settings.dask_address or settings.dask_cluster_class
            raise DaskUnavailableError(f"Dask cluster {where} unavailable: {type(e).__name__}: {e}") from e
        logger.info("MD of %d molecules on Dask %s (%d workers)", len(molecules),
                    settings.dask_address or settings.dask_cluster_class,
                    len(client.scheduler_info().get("workers", {})))
        resources = dask.annotate(resources=dict(settings.dask_resources)) if settings.dask_resources \
            else contextlib.nullcontext()
        futures: dict[str, Any] = {}
        with resources:
            for mol in molecules:
                # DaskTaskRunner.submit, with a task key of our own for the progress metadata
                key = f"mdgate-md-{gate_id}-{mol.name}"
                future = client.submit(
                    md_task.with_options(task_run_name=f"md-{mol.name}"), key=key, pure=False,
                    parameters={"potential": potential, "molecules": [mol], "config": config,
                                "threads": settings.dask_md_threads, "timeout_s": settings.md_timeout_s,
                                "progress": ProgressReporter(key), "abort": flag},
                    return_type="state",
                )
                futures[mol.name] = PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)
        n_steps = {m.name: config.md.n_steps for m in molecules}
        last = dict.fromkeys(n_steps, 0)
        results: dict[str, Any] = {}
        failure: BaseException | None = None
        pending = dict(futures)
        try:
            while pending:
                until = time.monotonic() + POLL_S
                while time.monotonic() < until and not any(f.wrapped_future.done() for f in pending.values()):
                    time.sleep(0.05)
                for name, future in list(pending.items()):
                    if not future.wrapped_future.done():
                        continue
                    del pending[name]
                    try:
                        [results[name]] = future.result()
                        progress.finish(name)
                    except BaseException as e:
                        if failure is None or isinstance(failure, aborted):
                            failure = e
                        distributed.Event(flag.name, client=client).set()
                moved = False
                for name in pending:
                    try:
                        published = client.get_metadata([pending[name].wrapped_future.key, PROGRESS_KEY], default=None)
                    except Exception as e:  # progress is cosmetic
                        logger.debug("progress of %s unreadable: %s", name, e)
                        continue
                    if not published:  # not started yet
                        continue
                    step, _, running = published
                    done = int(step) if running else n_steps[name]
                    if done != last[name]:
                        last[name], moved = done, True
                        progress(name, done, n_steps[name], True)
                if pending and not moved:  # the progress callback also renews the lease when due
                    name = next(iter(pending))
                    progress(name, last[name], n_steps[name], True)
        finally:
            with contextlib.suppress(Exception):
                distributed.Event(flag.name, client=client).clear()
    if failure is not None:
        raise failure
    return [results[m.name] for m in molecules]
