"""Rendering a report's plots, in parallel where the machine has cores to spare.

A report has two plots per molecule (NVE energy, heat stress) and one more per molecule with a
champion: twenty or thirty PNGs at ~0.15 s each, most of a gate's time outside MD. Each plot is
independent and CPU-bound in matplotlib (which holds the interpreter lock), so they are drawn in
forked worker processes: matplotlib is already imported in the parent, a fork costs milliseconds,
and a child only draws and writes its files. Where fork is not available, on one core, or for a
handful of plots, they are drawn here, one after the other.

A pool that breaks (a child killed) or hangs is not a reason to lose a report: what it did not
draw is drawn here. An exception raised by a plot function itself is a bug in the plot and
propagates, as it would without a pool.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

#: A plot: ``fn(*args)`` draws and writes one file.
PlotJob = tuple[Callable[..., None], tuple[Any, ...]]

#: Fewer plots than this per worker are not worth a process.
MIN_PLOTS_PER_WORKER = 3
#: A pool that has not drawn every plot by then is abandoned (the rest are drawn here).
POOL_TIMEOUT_S = 300.0


def available_cores() -> int:
    """Cores this process may run on."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def plot_workers(n_plots: int, workers: int | None = None) -> int:
    """Processes to draw ``n_plots`` with: ``workers`` if given, else one per core, at most one per
    ``MIN_PLOTS_PER_WORKER`` plots; 1 means here, serially.
    """
    if workers is None:
        workers = min(available_cores(), n_plots // MIN_PLOTS_PER_WORKER)
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(workers, n_plots))


def _draw(jobs: Sequence[PlotJob]) -> None:
    for fn, args in jobs:
        fn(*args)


def render_all(jobs: Sequence[PlotJob], workers: int | None = None) -> int:
    """Draw every plot of ``jobs``; returns the number of processes used (1: drawn here)."""
    n = plot_workers(len(jobs), workers)
    if n <= 1:
        _draw(jobs)
        return 1
    chunks = [list(jobs[k::n]) for k in range(n)]
    done = [False] * n
    ctx = multiprocessing.get_context("fork")
    pool = concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx)
    try:
        with warnings.catch_warnings():
            # Python warns about any fork of a process with threads: the children only draw.
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            futures = [pool.submit(_draw, chunk) for chunk in chunks]
        deadline = time.monotonic() + POOL_TIMEOUT_S
        for k, future in enumerate(futures):
            with contextlib.suppress(concurrent.futures.process.BrokenProcessPool, concurrent.futures.TimeoutError):
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                done[k] = True
    finally:
        if not all(done):
            for p in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    p.kill()
        pool.shutdown(wait=True, cancel_futures=True)
    for k, chunk in enumerate(chunks):
        if not done[k]:
            _draw(chunk)
    return n
