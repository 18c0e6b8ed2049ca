"""The base of the registry adapter: one ``MlflowClient``, error translation, version reads.

Every method returns mdgate's own types and raises :mod:`registry.errors` (transient or
permanent), never raw MLflow exceptions. Only modules of ``registry/`` touch MLflow objects.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import requests
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from registry import types as T
from registry.errors import (
    HostStorageError,
    PermanentRegistryError,
    RegistryError,
    TransientRegistryError,
    VersionNotFoundError,
)
from registry.types import Status, VersionInfo, parse_time, utcnow

TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                   "DEADLINE_EXCEEDED", "SERVICE_UNDER_MAINTENANCE", "ABORTED"}
#: OS errors of the gate host's own storage: retrying a request does not help.
LOCAL_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR, errno.EISDIR,
                        errno.EACCES, errno.EPERM}

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


def gist(text: str) -> str:
    """The gist of a request error: urllib3's "Caused by X('...')" text, an OS error, else its start."""
    found = re.search(r"Caused by \w+\((['\"])(.*?)\1\)", text)
    if found:
        return found.group(2).strip()
    found = re.search(r"\[Errno \d+\][^'\")]*", text)
    return found.group(0).strip() if found else one_line(text, 160)


def iso(t: datetime) -> str:
    """Tag value of a time: ISO 8601 in UTC, seconds."""
    return t.astimezone(UTC).isoformat(timespec="seconds")


def one_line(text: str, limit: int = 500) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters (for ``mdgate.reason``)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def quote(value: str) -> str:
    """Quote a string for an MLflow search filter."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_info(mv: ModelVersion) -> VersionInfo:
    """An MLflow ``ModelVersion`` as a :class:`VersionInfo`."""
    tags = dict(mv.tags or {})
    try:
        status = Status(tags[T.STATUS]) if tags.get(T.STATUS) else None
    except ValueError:
        status = None  # an unknown value is treated as never gated
    try:
        claim = int(tags.get(T.CLAIM, "0") or 0)
    except ValueError:
        claim = 0
    created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None
    return VersionInfo(
        name=mv.name, version=str(mv.version), status=status, reason=tags.get(T.REASON, ""),
        updated_at=parse_time(tags.get(T.UPDATED_AT)),
        lease_expires_at=parse_time(tags.get(T.LEASE_EXPIRES_AT)),
        claim=claim, criteria_sha256=tags.get(T.CRITERIA_SHA256), validation_run=tags.get(T.VALIDATION_RUN),
        report=tags.get(T.REPORT), flow_run=tags.get(T.FLOW_RUN) or None, source=mv.source or "",
        run_id=mv.run_id or None, created_at=created, description=mv.description or "",
        aliases=list(mv.aliases or []), tags=tags,
    )



def num(version: str) -> int:
    """A version number as an int (``-1`` when it is not one), for sorting."""
    try:
        return int(version)
    except ValueError:
        return -1


class RegistryBase:
    """The MLflow model registry as mdgate reads it; the concepts (claims, publishing, audit,
    webhooks) are mixins over this base.

    Args:
        tracking_uri: the MLflow tracking server (``http://...``; webhooks only fire through one).
        experiment: experiment holding the validation runs.
    """

    def __init__(self, tracking_uri: str, experiment: str = "mdgate"):
        self.tracking_uri = tracking_uri.rstrip("/")
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ---------------------------------------------------------------- reads

    def get_version(self, name: str, version: str | int) -> VersionInfo:
        """One version.

        Raises:
            VersionNotFoundError: no such model or version.
        """
        with translate_errors(f"reading {name}/{version}"):
            return to_info(self.client.get_model_version(name, str(version)))

    def search_versions(self, filter_string: str = "") -> list[VersionInfo]:
        """All versions matching an MLflow filter (every page), newest version first."""
        out: list[VersionInfo] = []
        token = None
        with translate_errors("searching model versions"):
            while True:
                page = self.client.search_model_versions(filter_string or None, max_results=1000,
                                                         page_token=token)
                out += [to_info(mv) for mv in page]
                token = page.token
                if not token:
                    break
        return sorted(out, key=lambda v: (v.name, -num(v.version)))

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of a registered model, newest first.

        Raises:
            VersionNotFoundError: the model is not registered.
        """
        with translate_errors(f"reading model {name}"):
            model = self.client.get_registered_model(name)
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = self.search_versions(f"name={quote(name)}")
        for v in versions:
            v.aliases = sorted(aliases.get(v.version, []))
        return versions

    def model_tags(self, name: str) -> dict[str, str]:
        """Tags of a registered model."""
        with translate_errors(f"reading model {name}"):
            return dict(self.client.get_registered_model(name).tags or {})

    def alias_version(self, name: str, alias: str = T.APPROVED_ALIAS) -> str | None:
        """The version an alias of ``name`` points at, or ``None``."""
        with translate_errors(f"reading model {name}"):
            aliases = self.client.get_registered_model(name).aliases or {}
        value = aliases.get(alias)
        return str(value) if value is not None else None

    def versions_to_gate(self, lease_s: float, now: datetime | None = None) -> list[VersionInfo]:
        """Versions a sweep should gate: no status (or Pending), or Running with an expired lease.

        MLflow cannot filter on a missing tag, so every version is listed and filtered here.
        """
        now = now or utcnow()
        return [v for v in self.search_versions() if v.due(now, lease_s)]

    # ---------------------------------------------------------------- lifecycle

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on a version, in the given order."""
        with translate_errors(f"tagging {name}/{version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)

    def experiment_id(self, name: str | None = None) -> str:
        """The id of experiment ``name`` (default :attr:`experiment`), created or restored as needed."""
        name = name or self.experiment
        with translate_errors(f"reading experiment {name}"):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None and exp.lifecycle_stage == "active":
                return exp.experiment_id
            if exp is not None:
                self.client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            try:
                return self.client.create_experiment(name)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                return self.client.get_experiment_by_name(name).experiment_id  # type: ignore[union-attr]
