"""One-off gating (``mdgate gate NAME VERSION``): the gate flow, run in the calling process.

Two modes, same flow, same tasks, same final states, report and registry result:

- ``server``: the flow run is recorded by the standing Prefect server at ``prefect_api_url``
  (``mdgate serve``, or a team's server); its tag concurrency limit on MD tasks applies.
- ``local``: no standing server. The flow is called with no Prefect API URL and Prefect 3 starts
  its temporary local server (``server.ephemeral.enabled``, alias
  ``PREFECT_SERVER_ALLOW_EPHEMERAL_MODE``): a subprocess on a free port of 127.0.0.1, stopped when
  the process exits. Its database is ``MDGATE_HOME/prefect-local.db`` (unless
  ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` is set), so the runs of one-off gates are kept in one
  place; it is not the embedded server's database, which that server may hold open.

The default picks ``server`` when the Prefect API answers, else ``local``. Prefect reads its
settings from the environment when it is imported: :func:`prepare` must run before anything
imports prefect; :func:`prefect_settings` also applies them to a process that imported it already.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from flows.servers import is_up
from flows.settings import Settings
from mdgate.errors import MdgateError

#: Seconds to wait for Prefect's temporary server to answer (Prefect's default, 20 s, is too
#: short on a loaded machine); ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` wins.
LOCAL_STARTUP_TIMEOUT_S = 120


class Mode(StrEnum):
    """Where the gate flow run is recorded."""

    SERVER = "server"
    LOCAL = "local"


class PrefectUnavailableError(MdgateError):
    """``--server`` was asked for and the Prefect API does not answer."""


@dataclass
class Choice:
    """The mode of a one-off gate and why it was chosen (one line for the user)."""

    mode: Mode
    why: str


def prefect_answers(api_url: str) -> bool:
    """Does the Prefect API at ``api_url`` answer its health check?"""
    return is_up(api_url.rstrip("/") + "/health")


def choose(settings: Settings, local: bool | None) -> Choice:
    """The mode for ``--local`` (True), ``--server`` (False) or neither (None).

    Raises:
        PrefectUnavailableError: ``--server`` and the Prefect API does not answer.
    """
    url = settings.prefect_api_url
    if local:
        return Choice(Mode.LOCAL, "in this process with Prefect's temporary local server (--local)")
    if prefect_answers(url):
        return Choice(Mode.SERVER, f"through the Prefect server at {url}")
    if local is False:
        raise PrefectUnavailableError(
            f"Prefect API at {url} does not answer; start it (`mdgate serve`), set MDGATE_PREFECT_API_URL, "
            "or drop --server to gate in this process")
    return Choice(Mode.LOCAL, f"in this process with Prefect's temporary local server (no Prefect API "
                              f"answers at {url})")


def local_database(settings: Settings) -> str:
    """The SQLite URL of the temporary server's database."""
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{home / 'prefect-local.db'}"


def prepare(settings: Settings, mode: Mode) -> None:
    """Set the environment for ``mode`` (before prefect is imported; the temporary server, a
    subprocess, inherits it).
    """
    if mode == Mode.SERVER:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url
        return
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "true"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(LOCAL_STARTUP_TIMEOUT_S))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_DATABASE_CONNECTION_URL", local_database(settings))


@contextlib.contextmanager
def prefect_settings(settings: Settings, mode: Mode) -> Iterator[None]:
    """Prefect's settings for ``mode`` in this context (also when prefect was imported before
    :func:`prepare`, or a Prefect profile names an API URL).
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if mode == Mode.SERVER:
        with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
            yield
        return
    timeout = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", LOCAL_STARTUP_TIMEOUT_S))
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True,
                                     PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout},
                            restore_defaults={PREFECT_API_URL}):
        yield


def gate_once(settings: Settings, mode: Mode, name: str, version: str, force: bool = False) -> Any:
    """Run the gate flow for one version in this process; return its final Prefect state
    (``Approved``, ``Rejected``, ``Error``, ``Skipped``, or ``Failed`` when the gate itself failed).
    """
    prepare(settings, mode)
    # Imported here, after prepare(): prefect reads its settings from the environment when imported.
    from flows.gate import gate_model_version

    config = str(settings.config) if settings.config else None
    with prefect_settings(settings, mode):
        return gate_model_version(name=name, version=version, force=force, config=config, return_state=True)
