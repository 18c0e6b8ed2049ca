"""The one client of the registry adapter: MLflow's client and the settings that every function
of ``registry/`` takes first (:class:`Connection`), and the translation of MLflow's and the
network's errors into :mod:`registry.errors`.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from registry.errors import (
    HostStorageError,
    PermanentRegistryError,
    RegistryError,
    TransientRegistryError,
    VersionNotFoundError,
)

#: MLflow error codes worth retrying.
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                   "DEADLINE_EXCEEDED", "SERVICE_UNDER_MAINTENANCE", "ABORTED"}
#: OS errors of the gate host's own storage: retrying a request does not help.
LOCAL_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR, errno.EISDIR,
                        errno.EACCES, errno.EPERM}

#: Writes tags on a model version, in the given order: ``(name, version, tags)``.
TagWriter = Callable[[str, str, dict[str, str]], None]


@dataclass(frozen=True)
class Connection:
    """A tracking server as the registry functions use it."""

    mlflow: MlflowClient
    """MLflow's client, for both tracking and the model registry."""
    tracking_uri: str
    """The tracking server (``http://...``, no trailing slash; webhooks only fire through one)."""
    experiment: str = "mdgate"
    """The experiment holding the validation runs."""
    tag_writer: TagWriter | None = None
    """Writes every multi-tag update of a version (a claim, a publication, a review); ``None``:
    :func:`registry.versions.write_tags`. The facade routes it through
    :meth:`registry.client.Registry.set_tags`, so that a subclass or a test replacing that method
    sees each of these writes (the tests pause or crash a gate between them).
    """


def connect(tracking_uri: str, experiment: str = "mdgate", tag_writer: TagWriter | None = None) -> Connection:
    """A :class:`Connection` to the tracking server at ``tracking_uri`` (registry on the same server)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return Connection(client, tracking_uri.rstrip("/"), experiment, tag_writer)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Re-raise MLflow and network errors as :class:`RegistryError` subclasses, chained."""
    try:
        yield
    except RegistryError:
        raise
    except MlflowException as e:
        code = str(getattr(e, "error_code", "") or "")
        msg = (str(e.message if hasattr(e, "message") else e).splitlines() or [""])[0][:300]
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise VersionNotFoundError(f"{what}: {msg}") from e
        if code in TRANSIENT_CODES:
            raise TransientRegistryError(f"{what}: {msg}") from e
        raise PermanentRegistryError(f"{what}: {msg}") from e
    except OSError as e:  # requests' ConnectionError and timeouts are OSErrors
        if e.errno in LOCAL_STORAGE_ERRNOS and not isinstance(e, requests.RequestException):
            raise HostStorageError(f"{what}: the gate host cannot write {e.filename or 'its files'} "
                                   f"([Errno {e.errno}] {e.strerror})") from e
        raise TransientRegistryError(f"{what}: {type(e).__name__}: {e}") from e


def experiment_id(conn: Connection, name: str | None = None) -> str:
    """The id of experiment ``name`` (default: the connection's), created or restored as needed."""
    name = name or conn.experiment
    with translate_errors(f"reading experiment {name}"):
        exp = conn.mlflow.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "active":
            return exp.experiment_id
        if exp is not None:
            conn.mlflow.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return conn.mlflow.create_experiment(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            created = conn.mlflow.get_experiment_by_name(name)  # by another process, just now
            if created is None:  # and deleted for good since
                raise
            return created.experiment_id
