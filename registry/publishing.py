"""Publishing a verdict: the validation run, description, tags, audit entry, status (last), and
the alias.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from mlflow.exceptions import MlflowException

from mdgate.results import ValidationResult, Verdict
from registry import types as T
from registry.aliases import update_alias
from registry.audit import record
from registry.claims import check_claim, release
from registry.connection import Connection, translate_errors
from registry.runs import log_validation_run
from registry.summary import description_markdown, verdict_tags
from registry.text import iso, one_line
from registry.types import AuditEvent, Claim, EventKind, Publication, Status, VersionInfo, utcnow
from registry.versions import set_tags


def publish(conn: Connection, claim: Claim, result: ValidationResult, report_dir: Path, criteria_sha256: str,
            extra_tags: dict[str, str] | None = None, status: Status | None = None,
            reason: str | None = None) -> Publication:
    """Store a verdict: validation run (params, metrics, artifacts), description, tags,
    status, alias, and the audit trail's events. The status is written last, after everything
    else is stored.

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
    run_id, exp_id, artifact_uri = log_validation_run(conn, claim, result, report_dir, criteria_sha256)
    run_url = f"{conn.tracking_uri}/#/experiments/{exp_id}/runs/{run_id}"
    report_uri = f"{artifact_uri}/report.md"
    info = check_claim(conn, claim)
    status = status or Status(result.verdict.value)
    reason = one_line(reason if reason is not None else result.reason)
    with translate_errors(f"describing {claim.name}/{claim.version}"):
        conn.mlflow.update_model_version(
            claim.name, claim.version,
            description=description_markdown(info.description, result, run_url, report_uri),
        )
    tags = {
        T.REASON: reason, T.REPORT: report_uri, T.VALIDATION_RUN: run_id, T.DECISION: "automatic",
        T.FLOW_RUN: claim.flow_run or "", T.CRITERIA_SHA256: criteria_sha256,
        **(extra_tags or {}), T.UPDATED_AT: iso(utcnow()),
    }
    set_figure_tags(conn, info, result)
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
    with translate_errors(f"clearing the report tags of {claim.name}/{claim.version}"):
        for key in (T.REPORT, T.VALIDATION_RUN):
            with contextlib.suppress(MlflowException):  # absent: nothing to clear
                conn.mlflow.delete_model_version_tag(claim.name, claim.version, key)
    set_figure_tags(conn, info, result)
    set_tags(conn, claim.name, claim.version, {
        T.REASON: one_line(result.reason), T.FLOW_RUN: claim.flow_run or "", T.DECISION: "automatic",
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


def set_figure_tags(conn: Connection, info: VersionInfo, result: ValidationResult) -> None:
    """Write the verdict's searchable figures (:func:`registry.summary.verdict_tags`) and
    remove those this verdict has none of, so that a re-gate leaves no stale figure behind.
    Tags that already hold the value (``mdgate.n_parameters`` from registration) are not
    written again.
    """
    with translate_errors(f"tagging {info.name}/{info.version}"):
        for key, value in verdict_tags(result).items():
            if value is not None:
                if info.tags.get(key) != value:
                    conn.mlflow.set_model_version_tag(info.name, info.version, key, value)
            elif key in info.tags:
                with contextlib.suppress(MlflowException):  # removed meanwhile
                    conn.mlflow.delete_model_version_tag(info.name, info.version, key)
