"""The audit trail: every decision, alias move, re-gate and rollback, appended as one MLflow run
of the ``mdgate-audit`` experiment.

An event's fields are the run's *params*, which MLflow never lets anyone overwrite (logging a
param again with another value is refused), so the next decision cannot rewrite the history; the
model name, version and kind are also tags, for searching. Events are never deleted by mdgate.
Order: the event's time in nanoseconds (``at_ns``), then the run's start time.
"""

from __future__ import annotations

import time

from mlflow.entities import Param

from registry.base import RegistryBase, iso, quote, translate_errors
from registry.types import AuditEvent, EventKind, parse_time

AUDIT_EXPERIMENT = "mdgate-audit"
#: The event's fields stored as params (all of them; strings).
FIELDS = ("model", "version", "kind", "status", "decided_by", "reason", "criteria_sha256", "flow_run",
          "validation_run", "alias_from", "alias_to")


class AuditMixin(RegistryBase):
    """Append events to the audit trail and read a model's history."""

    audit_experiment: str = AUDIT_EXPERIMENT

    def record(self, event: AuditEvent) -> str:
        """Append ``event`` to the audit trail; return its run id."""
        experiment_id = self.experiment_id(self.audit_experiment)
        values = {f: str(getattr(event, f).value if f == "kind" else getattr(event, f))[:6000] for f in FIELDS}
        values["at"] = iso(event.at)
        values["at_ns"] = str(time.time_ns())
        with translate_errors(f"recording the {event.kind.value} of {event.model}/{event.version} in the audit trail"):
            run = self.client.create_run(
                experiment_id, run_name=f"{event.kind.value}/{event.model}/v{event.version}",
                tags={"mdgate.model": event.model, "mdgate.version": event.version,
                      "mdgate.event": event.kind.value, "mdgate.decided_by": event.decided_by},
            )
            self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in values.items()])
            self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def history(self, name: str, version: str | None = None) -> list[AuditEvent]:
        """The audit trail of a registered model (or one version), oldest first."""
        experiment_id = self.experiment_id(self.audit_experiment)
        filter_string = f"tags.`mdgate.model` = {quote(name)}"
        if version is not None:
            filter_string += f" AND tags.`mdgate.version` = {quote(str(version))}"
        runs = []
        token = None
        with translate_errors(f"reading the audit trail of {name}"):
            while True:
                page = self.client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
                runs += list(page)
                token = page.token
                if not token:
                    break
        events = []
        for run in runs:
            p = run.data.params
            events.append((int(p.get("at_ns", "0") or 0), run.info.start_time or 0, AuditEvent(
                **{f: p.get(f, "") for f in FIELDS if f != "kind"}, kind=EventKind(p.get("kind", "verdict")),
                at=parse_time(p.get("at")) or parse_time("1970-01-01T00:00:00+00:00"), run_id=run.info.run_id,
            )))
        return [e for _, _, e in sorted(events, key=lambda t: (t[0], t[1]))]
