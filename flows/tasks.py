"""What every flow module shares: task options (registry tasks retry only transient errors), the
registry facade for the settings (one per tracking server and experiment), artifact key slugs,
the hard deadline on calls into model code, and the task that fetches a version's files.
"""

from __future__ import annotations

import contextvars
import functools
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from flows.settings import Settings
from mdgate.errors import MDTimeoutError
from registry import Registry
from registry.artifacts import fetch_candidate as fetch_version_files
from registry.errors import TransientRegistryError
from registry.types import Candidate


def only_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Retry condition: retry a task only when it failed on a transient registry error."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(exc, TransientRegistryError)


#: Options of a task that calls the registry: retried on transient errors only, never cached.
REGISTRY_TASK: dict[str, Any] = dict(retries=3, retry_delay_seconds=[2, 10, 30],
                                     retry_condition_fn=only_transient, cache_policy=NO_CACHE,
                                     persist_result=False)
#: Options of a task that calls the engine: never retried (a verdict is data), never cached.
ENGINE_TASK: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


def slug(text: str) -> str:
    """A Prefect artifact key fragment: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-") or "x"


@functools.lru_cache(maxsize=8)
def _registry(tracking_uri: str, experiment: str) -> Registry:
    return Registry(tracking_uri, experiment)


def registry_for(settings: Settings) -> Registry:
    """The registry facade for these settings, made once per tracking server and experiment (it
    holds no state but MLflow's client, which is safe to share between threads).
    """
    return _registry(settings.tracking_uri, settings.experiment)


def call_with_deadline[T](fn: Callable[[], T], timeout_s: float | None, what: str) -> T:
    """``fn()``, or :class:`~mdgate.errors.MDTimeoutError` if it has not returned after ``timeout_s``.

    Model code that never returns (a deadlock, one long C call) cannot be interrupted in a
    thread: ``fn`` runs in a daemon thread, which is left behind on timeout (it does not keep
    the process alive) while the gate goes on to publish Error.
    """
    if timeout_s is None:
        return fn()
    box: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(fn)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target, name=f"mdgate-{slug(what)}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise MDTimeoutError(f"{what} did not return within {timeout_s:g} s (MDGATE_MD_TIMEOUT_S): "
                             "the model hangs")
    if "error" in box:
        raise box["error"]
    return box["value"]


@task(name="fetch", **REGISTRY_TASK)
def fetch_candidate(settings: Settings, name: str, version: str, work_dir: Path) -> Candidate:
    """Download the version's model, metadata and the model's own validation sets."""
    return fetch_version_files(registry_for(settings), name, version, work_dir)
