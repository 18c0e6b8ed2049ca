"""The audit trail: every decision, alias move, re-gate and rollback, appended as one MLflow run
of the ``mdgate-audit`` experiment.

An event's fields are the run's *params*, which MLflow never lets anyone overwrite (logging a
param again with another value is refused), so the next decision cannot rewrite the history; the
model name, version and kind are also tags, for searching. Events are never deleted by mdgate.
Order: the event's time in nanoseconds (``at_ns``), then the run's start time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from mlflow.entities import Param, Run

from registry.connection import Connection, experiment_id, translate_errors
from registry.text import iso, quote
from registry.types import AuditEvent, EventKind, parse_time

AUDIT_EXPERIMENT = "mdgate-audit"
#: The event's fields stored as params (all of them; strings).
FIELDS = ("model", "version", "kind", "status", "decided_by", "reason", "criteria_sha256", "flow_run",
          "validation_run", "alias_from", "alias_to", "model_ran")
#: The time of an event that has none (written before events had one).
EPOCH = datetime.fromtimestamp(0, UTC)


def record(conn: Connection, event: AuditEvent) -> str:
    """Append ``event`` to the audit trail; return its run id."""
    audit_id = experiment_id(conn, AUDIT_EXPERIMENT)
    values = {f: str(getattr(event, f).value if f == "kind" else getattr(event, f))[:6000] for f in FIELDS}
    values["at"] = iso(event.at)
    values["at_ns"] = str(time.time_ns())
    with translate_errors(f"recording the {event.kind.value} of {event.model}/{event.version} in the audit trail"):
        run = conn.mlflow.create_run(
            audit_id, run_name=f"{event.kind.value}/{event.model}/v{event.version}",
            tags={"mdgate.model": event.model, "mdgate.version": event.version,
                  "mdgate.event": event.kind.value, "mdgate.decided_by": event.decided_by},
        )
        conn.mlflow.log_batch(run.info.run_id, params=[Param(k, v) for k, v in values.items()])
        conn.mlflow.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def history(conn: Connection, name: str, version: str | None = None) -> list[AuditEvent]:
    """The audit trail of a registered model (or one version), oldest first."""
    audit_id = experiment_id(conn, AUDIT_EXPERIMENT)
    filter_string = f"tags.`mdgate.model` = {quote(name)}"
    if version is not None:
        filter_string += f" AND tags.`mdgate.version` = {quote(str(version))}"
    runs: list[Run] = []
    token = None
    with translate_errors(f"reading the audit trail of {name}"):
        while True:
            page = conn.mlflow.search_runs([audit_id], filter_string, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
    events = []
    for run in runs:
        p = run.data.params
        events.append((int(p.get("at_ns", "0") or 0), run.info.start_time or 0, AuditEvent(
            **{f: p.get(f, "") for f in FIELDS if f != "kind"}, kind=EventKind(p.get("kind", "verdict")),
            at=parse_time(p.get("at")) or EPOCH, run_id=run.info.run_id,
        )))
    return [e for _, _, e in sorted(events, key=lambda t: (t[0], t[1]))]
