"""A person's decisions: a review overrules or settles a version's status, a rollback takes
``approved`` back from its version. Both move the alias and are recorded in the audit trail.
"""

from __future__ import annotations

from registry import types as T
from registry.aliases import update_alias
from registry.audit import record
from registry.connection import Connection
from registry.errors import PermanentRegistryError
from registry.figures import LEGACY_TAGS
from registry.text import iso, one_line
from registry.types import AuditEvent, EventKind, Status, VersionInfo, utcnow
from registry.versions import alias_version, approved_versions, delete_tags, get_version, set_tags


def review(conn: Connection, name: str, version: str, approve: bool, reason: str, by: str,
           flow_run: str = "") -> VersionInfo:
    """A person's decision on a version (any status but a live Running): sets
    ``mdgate.status``, ``mdgate.decided_by`` (``review/<the person>``) and ``mdgate.reason``,
    moves or keeps the alias, and records both in the audit trail.

    Raises:
        PermanentRegistryError: no reason or reviewer given, or a gate is running on the version.
    """
    if not reason.strip() or not by.strip():
        raise PermanentRegistryError("a review needs a reason and a reviewer: pass --reason and --by")
    info = get_version(conn, name, version)
    if info.status == Status.RUNNING and not info.lease_expired(utcnow(), 0):
        raise PermanentRegistryError(
            f"{info.ref} is being gated (flow run {info.flow_run}); review it once the gate has published")
    status = Status.APPROVED if approve else Status.REJECTED
    was = info.status.value if info.status else "never gated"
    text = one_line(f"{status.value} by {by}: {reason} (was {was})")
    _decide(conn, name, str(version), status, by, text)
    record(conn, AuditEvent(model=name, version=str(version), kind=EventKind.REVIEW, status=status.value,
                            decided_by=by, reason=text, criteria_sha256=info.criteria_sha256 or "",
                            flow_run=flow_run or info.flow_run or "", validation_run=info.validation_run or ""))
    update_alias(conn, name, by=by, reason=f"review of v{version}: {reason}", flow_run=flow_run)
    return get_version(conn, name, version)


def rollback(conn: Connection, name: str, reason: str, by: str) -> tuple[str, str | None]:
    """Take ``approved`` back from its version: that version is marked Rejected by ``by``
    (so the alias, always the newest Approved version, moves to the previous one) and both
    are recorded in the audit trail. Returns (the version rolled back, the alias now).

    Raises:
        PermanentRegistryError: no alias to roll back, no other Approved version, or no
            reason or reviewer given.
    """
    if not reason.strip() or not by.strip():
        raise PermanentRegistryError("a rollback needs a reason and a reviewer: pass --reason and --by")
    current = alias_version(conn, name)
    if current is None:
        raise PermanentRegistryError(f"{name} has no '{T.APPROVED_ALIAS}' alias to roll back")
    if not [v for v in approved_versions(conn, name) if v.version != current]:
        raise PermanentRegistryError(f"{name} has no Approved version before v{current} to roll back to; "
                                     f"reject v{current} with `mdgate review` instead")
    info = get_version(conn, name, current)
    text = one_line(f"rolled back by {by}: {reason} (was Approved)")
    _decide(conn, name, current, Status.REJECTED, by, text)
    record(conn, AuditEvent(model=name, version=current, kind=EventKind.ROLLBACK, status=Status.REJECTED.value,
                            decided_by=by, reason=text, criteria_sha256=info.criteria_sha256 or ""))
    alias = update_alias(conn, name, by=by, reason=f"rollback of v{current}: {reason}")
    return current, alias


def _decide(conn: Connection, name: str, version: str, status: Status, by: str, text: str) -> None:
    """Write a person's decision: who and why first, the status last."""
    delete_tags(conn, get_version(conn, name, version), LEGACY_TAGS)
    set_tags(conn, name, version, {T.DECIDED_BY: f"{T.REVIEW_PREFIX}{by}", T.REASON: text,
                                   T.UPDATED_AT: iso(utcnow())})
    set_tags(conn, name, version, {T.STATUS: status.value})
