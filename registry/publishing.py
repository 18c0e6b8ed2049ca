"""Publishing a verdict: the validation run, its figures, description, tags, audit entry, status
(last), and the alias.
"""

from __future__ import annotations

from pathlib import Path

from mdgate.results import ValidationResult, Verdict
from registry import types as T
from registry.aliases import update_alias
from registry.audit import record
from registry.claims import check_claim, release
from registry.connection import Connection, translate_errors
from registry.figures import drop_figures, drop_legacy_tags, log_figures
from registry.runs import log_validation_run
from registry.summary import description_markdown
from registry.text import iso, one_line
from registry.types import AuditEvent, Claim, EventKind, Publication, Status, utcnow
from registry.versions import set_tags


def publish(conn: Connection, claim: Claim, result: ValidationResult, report_dir: Path, criteria_sha256: str,
            extra_tags: dict[str, str] | None = None, status: Status | None = None,
            reason: str | None = None) -> Publication:
    """Store a verdict: validation run (params, metrics, artifacts), its figures (a logged model,
    :mod:`registry.figures`), description, tags, status, alias, and the audit trail's events.
    The status is written last, after everything else is stored.

    Args:
        conn: the registry.
        claim: the gate's claim on the version.
        result: the engine's result.
        report_dir: the report folder (stored as the validation run's artifacts).
        criteria_sha256: hash of the criteria applied.
        extra_tags: more version tags.
        status: the status to set (default: the result's verdict; ``PendingReview`` when a
            person decides).
        reason: ``mdgate.reason`` (default: the result's reason).

    Raises:
        LeaseLostError: another gate took the version over; the validation run is kept but
            the version is left to that gate.
    """
    check_claim(conn, claim)
    run_id, exp_id, _ = log_validation_run(conn, claim, result, report_dir, criteria_sha256)
    run_url = f"{conn.tracking_uri}/#/experiments/{exp_id}/runs/{run_id}"
    report_uri = f"runs:/{run_id}/report.md"
    log_figures(conn, claim, result, run_id, criteria_sha256)
    info = check_claim(conn, claim)
    status = status or Status(result.verdict.value)
    reason = one_line(reason if reason is not None else result.reason)
    with translate_errors(f"describing {claim.name}/{claim.version}"):
        conn.mlflow.update_model_version(
            claim.name, claim.version,
            description=description_markdown(info.description, result, run_url, report_uri),
        )
    tags = {
        T.REASON: reason, T.REPORT: report_uri, T.FLOW_RUN: claim.flow_run or "",
        T.CRITERIA_SHA256: criteria_sha256, **(extra_tags or {}), T.UPDATED_AT: iso(utcnow()),
    }
    if result.decided_by:
        tags[T.DECIDED_BY] = result.decided_by
    drop_legacy_tags(conn, info, also=() if result.decided_by else (T.DECIDED_BY,))
    set_tags(conn, claim.name, claim.version, tags)
    alias = _settle(conn, claim, AuditEvent(
        model=claim.name, version=claim.version, kind=EventKind.VERDICT, status=status.value, reason=reason,
        criteria_sha256=criteria_sha256, flow_run=claim.flow_run or "", validation_run=run_id,
        model_ran=result.model.runs_in or ""))
    return Publication(run_id=run_id, run_url=run_url, report_uri=report_uri, status=status,
                       alias_version=alias)


def publish_error(conn: Connection, claim: Claim, result: ValidationResult, criteria_sha256: str,
                  extra_tags: dict[str, str] | None = None, status: Status = Status.ERROR) -> Publication:
    """Mark the version Error when its report cannot be written or stored (disk full,
    artifact store unwritable): the one status set without a report, with the reason saying so.

    Raises:
        LeaseLostError: another gate took the version over.
    """
    if result.verdict != Verdict.ERROR:
        raise ValueError("only an Error is published without a report")
    info = check_claim(conn, claim)
    drop_figures(conn, claim.name, claim.version)
    drop_legacy_tags(conn, info, also=(T.DECIDED_BY, T.REPORT))
    set_tags(conn, claim.name, claim.version, {
        T.REASON: one_line(result.reason), T.FLOW_RUN: claim.flow_run or "",
        T.CRITERIA_SHA256: criteria_sha256, **(extra_tags or {}), T.UPDATED_AT: iso(utcnow()),
    })
    alias = _settle(conn, claim, AuditEvent(
        model=claim.name, version=claim.version, kind=EventKind.VERDICT, status=status.value,
        reason=one_line(result.reason), criteria_sha256=criteria_sha256, flow_run=claim.flow_run or "",
        model_ran=result.model.runs_in or ""))
    return Publication(run_id="", run_url="", report_uri="", status=status, alias_version=alias)


def _settle(conn: Connection, claim: Claim, event: AuditEvent) -> str | None:
    """The last steps of a publication, once everything else is stored: the audit entry, the
    status, the lease released, the alias moved. Returns the version the alias points at.
    """
    # The audit entry before the status: a failure here retries the whole publication while
    # the claim still holds (at worst an entry twice, never a status without its entry).
    record(conn, event)
    # The status last; the lease stays until then, so a gate that dies before this line
    # leaves the version Running with its lease, which runs out: the sweep gates it again.
    set_tags(conn, claim.name, claim.version, {T.STATUS: event.status})
    release(conn, claim)
    return update_alias(conn, claim.name, flow_run=claim.flow_run or "",
                        reason=f"v{claim.version} {event.status} by the gate")

