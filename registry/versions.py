"""Version reads and tag writes: what a registered model version holds, as :class:`VersionInfo`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from registry import types as T
from registry.connection import Connection, translate_errors
from registry.text import num, quote
from registry.types import Status, VersionInfo, parse_time, utcnow


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
        claim=claim, criteria_sha256=tags.get(T.CRITERIA_SHA256),
        validation_run=tags.get(T.VALIDATION_RUN) or run_of(tags.get(T.REPORT)),
        report=tags.get(T.REPORT), flow_run=tags.get(T.FLOW_RUN) or None, source=mv.source or "",
        run_id=mv.run_id or None, created_at=created, description=mv.description or "",
        aliases=list(mv.aliases or []), tags=tags,
    )


def run_of(uri: str | None) -> str | None:
    """The run id in a ``runs:/<run_id>/...`` artifact URI (the report tag), else ``None``."""
    if not uri or not uri.startswith("runs:/"):
        return None
    return uri.removeprefix("runs:/").split("/", 1)[0] or None


def get_version(conn: Connection, name: str, version: str | int) -> VersionInfo:
    """One version.

    Raises:
        VersionNotFoundError: no such model or version.
    """
    with translate_errors(f"reading {name}/{version}"):
        return to_info(conn.mlflow.get_model_version(name, str(version)))


def search_versions(conn: Connection, filter_string: str = "") -> list[VersionInfo]:
    """All versions matching an MLflow filter (every page), newest version first."""
    out: list[VersionInfo] = []
    token = None
    with translate_errors("searching model versions"):
        while True:
            page = conn.mlflow.search_model_versions(filter_string or None, max_results=1000, page_token=token)
            out += [to_info(mv) for mv in page]
            token = page.token
            if not token:
                break
    return sorted(out, key=lambda v: (v.name, -num(v.version)))


def list_versions(conn: Connection, name: str) -> list[VersionInfo]:
    """Every version of a registered model, newest first.

    Raises:
        VersionNotFoundError: the model is not registered.
    """
    with translate_errors(f"reading model {name}"):
        model = conn.mlflow.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = search_versions(conn, f"name={quote(name)}")
    for v in versions:
        v.aliases = sorted(aliases.get(v.version, []))
    return versions


def model_tags(conn: Connection, name: str) -> dict[str, str]:
    """Tags of a registered model."""
    with translate_errors(f"reading model {name}"):
        return dict(conn.mlflow.get_registered_model(name).tags or {})


def alias_version(conn: Connection, name: str, alias: str = T.APPROVED_ALIAS) -> str | None:
    """The version an alias of ``name`` points at, or ``None``."""
    with translate_errors(f"reading model {name}"):
        aliases = conn.mlflow.get_registered_model(name).aliases or {}
    value = aliases.get(alias)
    return str(value) if value is not None else None


def approved_versions(conn: Connection, name: str) -> list[VersionInfo]:
    """The versions of ``name`` whose status is Approved, newest first."""
    return search_versions(conn, f"name={quote(name)} AND tags.`{T.STATUS}` = 'Approved'")


def versions_to_gate(conn: Connection, lease_s: float, now: datetime | None = None) -> list[VersionInfo]:
    """Versions a sweep should gate: no status (or Pending), or Running with an expired lease.

    MLflow cannot filter on a missing tag, so every version is listed and filtered here.
    """
    now = now or utcnow()
    return [v for v in search_versions(conn) if v.due(now, lease_s)]


def set_tags(conn: Connection, name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a version, in the given order, through the connection's tag writer."""
    if conn.tag_writer is not None:
        conn.tag_writer(name, version, tags)
    else:
        write_tags(conn, name, version, tags)


def write_tags(conn: Connection, name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a version, in the given order, one request each."""
    with translate_errors(f"tagging {name}/{version}"):
        for key, value in tags.items():
            conn.mlflow.set_model_version_tag(name, version, key, value)


def delete_tags(conn: Connection, info: VersionInfo, keys: Iterable[str]) -> None:
    """Remove those of ``keys`` that the version has (one already gone is no error)."""
    with translate_errors(f"tagging {info.name}/{info.version}"):
        for key in keys:
            if key in info.tags:
                with contextlib.suppress(MlflowException):  # removed meanwhile
                    conn.mlflow.delete_model_version_tag(info.name, info.version, key)
