"""The ``approved`` alias: always the newest Approved version of a model; every move is
recorded in the audit trail.
"""

from __future__ import annotations

from registry import types as T
from registry.audit import record
from registry.connection import Connection, translate_errors
from registry.text import num
from registry.types import AUTOMATIC, AuditEvent, EventKind
from registry.versions import alias_version, approved_versions


def update_alias(conn: Connection, name: str, by: str = AUTOMATIC, reason: str = "", flow_run: str = "",
                 kind: EventKind = EventKind.ALIAS) -> str | None:
    """Point the ``approved`` alias at the newest Approved version (remove it if none); a
    move is recorded in the audit trail (``by``, ``reason``). Returns the version it points at.
    """
    newest = max((v.version for v in approved_versions(conn, name)), key=num, default=None)
    before = alias_version(conn, name)
    with translate_errors(f"setting alias {T.APPROVED_ALIAS} of {name}"):
        if newest is not None and newest != before:
            conn.mlflow.set_registered_model_alias(name, T.APPROVED_ALIAS, newest)
        elif newest is None and before is not None:
            conn.mlflow.delete_registered_model_alias(name, T.APPROVED_ALIAS)
    if newest != before:
        record(conn, AuditEvent(model=name, version=newest or before or "", kind=kind, decided_by=by,
                                reason=reason, flow_run=flow_run, alias_from=before or "",
                                alias_to=newest or ""))
    return newest
