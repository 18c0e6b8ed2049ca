"""The gate's MD lanes in worker processes of the gate's own machine
(``MDGATE_TASK_RUNNER=processes``, the default).

With the local runner, a gate's MD tasks are threads of the flow's process: they share the
interpreter lock, and a small model's per-step Python work serialises them. Here each MD task is
still a Prefect task run of the gate (``md-<molecule>+...``, tagged with ``MDGATE_GPU_TAG`` where
a limit exists, visible in the UI), but the task only waits: the MD itself runs in a pool of
worker processes that the gate starts once, each with its share of the cores (``cores //
md_parallel`` torch threads) and the potential unpickled once per process.

What the thread path shares in memory crosses processes here:

- progress: each worker puts ``(molecule, step, n_steps, running)`` on a queue at most every
  ``PROGRESS_EVERY_S`` (and when a trajectory stops); the waiting task hands the latest to its
  lane's guard (``flows.md_lanes.LaneGuard``) every ``POLL_S``, which passes it on to the gate's
  progress;
- stop-on-failure and timeouts: the guard, called every ``POLL_S`` whatever the worker does,
  raises when another lane failed or the lane's deadline passed; the pool then sets an event the
  workers check at every MD step;
- a worker that does not return (a model hanging inside a call) is killed when the gate ends.

How the workers start (:func:`start_method`): with one torch thread each (``cores //
md_parallel`` is 1, as on a 2-core machine), they are forked from the gate's process: torch,
schnetpack and the potential are already there, and the pool is up in a fraction of a second
instead of the 10 s two spawned interpreters take to import them. A fork copies only the forking
thread; the child runs nothing but the MD loop (no Prefect, no logging, no HTTP), and with one
thread torch never enters OpenMP, whose pool does not survive a fork. With more threads per
worker they are spawned (fresh interpreters, the potential unpickled), the safe way for OpenMP.
``MDGATE_MD_START`` (``fork`` | ``spawn``) overrides the choice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import queue
import threading
import time
import warnings
from typing import Any

from mdgate.errors import MDAbortedError
from mdgate.runner import configure_threads
from mdgate.stages.md import ProgressFn, run_md

#: Seconds between the waiting task's looks at its worker (result, progress, abort, deadline).
POLL_S = 0.25
#: A worker publishes a running trajectory's progress at most this often.
PROGRESS_EVERY_S = 1.0

# State of a worker process, set once by ``_init_worker``.
_POTENTIAL: Any = None
_QUEUE: Any = None
_STOP: Any = None
_ALL_UP: Any = None


def start_method(threads: int) -> str:
    """``fork`` for one-thread workers where the platform forks, else ``spawn``.

    ``MDGATE_MD_START`` (``fork`` | ``spawn``) overrides the choice.
    """
    forced = os.environ.get("MDGATE_MD_START", "").strip().lower()
    if forced in ("fork", "spawn"):
        return forced
    return "fork" if threads == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"


class StopRequested(MDAbortedError):
    """Raised in a worker whose gate asked its MD to stop (another lane failed, or a timeout)."""


def _init_worker(potential: bytes, threads: int, progress: Any, stop: Any, all_up: Any) -> None:
    global _POTENTIAL, _QUEUE, _STOP, _ALL_UP
    configure_threads(threads)
    _POTENTIAL = pickle.loads(potential)
    _QUEUE, _STOP, _ALL_UP = progress, stop, all_up


def _warm() -> int:
    """Start-up task: returns once every worker has started and unpickled the potential (the
    executor starts workers on demand; waiting for each other makes it start them all now).
    """
    with contextlib.suppress(Exception):
        _ALL_UP.wait(timeout=300)
    return os.getpid()


def _run_molecules(molecules: list[Any], config: Any) -> list[Any]:
    last: dict[str, float] = {}

    def tick(name: str, step: int, n_steps: int, running: bool) -> None:
        if _STOP.is_set():
            raise StopRequested(f"MD of {name} stopped by the gate")
        now = time.monotonic()
        if running and now - last.get(name, float("-inf")) < PROGRESS_EVERY_S:
            return
        last[name] = now
        with contextlib.suppress(Exception):  # progress is cosmetic: never fail MD for it
            _QUEUE.put_nowait((name, step, n_steps, running))

    return run_md(_POTENTIAL, molecules, config, tick)


class MDProcessPool:
    """A pool of MD worker processes for one gate (a context manager: the workers end with it)."""

    def __init__(self, potential: Any, n_workers: int, threads: int):
        self.start_method = start_method(threads)
        ctx = multiprocessing.get_context(self.start_method)
        self._progress = ctx.Queue()
        self._stop = ctx.Event()
        self._executor = concurrent.futures.ProcessPoolExecutor(
            n_workers, mp_context=ctx, initializer=_init_worker,
            initargs=(pickle.dumps(potential), threads, self._progress, self._stop, ctx.Barrier(n_workers)))
        self._latest: dict[str, tuple[int, int, bool]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read_progress, name="mdgate-md-progress", daemon=True)
        self._reader.start()
        with warnings.catch_warnings():
            # Python warns about any fork of a process with threads; see the module docstring.
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            self._warming = [self._executor.submit(_warm) for _ in range(n_workers)]

    def __enter__(self) -> MDProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_progress(self) -> None:
        while not self._closed.is_set():
            try:
                name, step, n_steps, running = self._progress.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return
            with self._lock:
                self._latest[name] = (step, n_steps, running)

    def run(self, molecules: list[Any], config: Any, tick: ProgressFn) -> list[Any]:
        """Run the MD of a lane of ``molecules`` in a worker; return one ``MoleculeRun`` per molecule.

        ``tick(name, step, n_steps, running)`` (the lane's guard) gets the worker's progress of each
        molecule and is called at least every ``POLL_S`` (with the last known step); when it raises
        (abort, deadline), the workers are told to stop and the exception propagates.
        """
        future = self._executor.submit(_run_molecules, molecules, config)
        n_steps = max(config.md.n_steps if config.md.enabled else 0,
                      config.stress.n_steps if config.stress.enabled else 0, 1)
        last = {m.name: (0, n_steps, True) for m in molecules}
        while True:
            try:
                return future.result(timeout=POLL_S)
            except concurrent.futures.TimeoutError:
                pass
            except StopRequested:
                raise
            with self._lock:
                for name in last:
                    last[name] = self._latest.pop(name, last[name])
            try:
                for name, (step, total, running) in last.items():
                    tick(name, step, total, running)
            except BaseException:
                self._stop.set()
                future.cancel()
                raise

    def close(self) -> None:
        """Stop the workers: at once when MD was asked to stop (a worker may hang in the model)."""
        self._closed.set()
        processes = list(getattr(self._executor, "_processes", {}).values())
        if self._stop.is_set():
            for p in processes:
                with contextlib.suppress(Exception):
                    p.kill()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._reader.join(timeout=2)
        with contextlib.suppress(Exception):
            self._progress.close()
