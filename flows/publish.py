"""Publishing a gate's decision: the report written, then the verdict stored in MLflow (report
first, status last), and the Prefect artifacts of the flow run.

A verdict is never published without its report: when the report cannot be written on the gate
host (disk full) or stored in MLflow's artifact store while the tracking server answers (its
store full or unwritable), the version is marked Error, saying so (the reason is the engine's,
``mdgate.checks.decision.unpublished_reason``). When the server does not answer at all, the error
is raised: the version stays Running and the sweep gates it again once its lease is over.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.servers import is_up
from flows.settings import Settings
from flows.tasks import ENGINE_TASK, REGISTRY_TASK, registry_for
from mdgate.checks.decision import Decision, settle, unpublished_reason
from mdgate.config import GateConfig
from mdgate.report.markdown import write_report as write_report_files
from mdgate.results import BaselineComparison, ValidationResult
from mdgate.runner import error_result
from registry.errors import ArtifactStoreError
from registry.summary import summary_rows
from registry.types import Claim, Publication, Status


@task(name="report", **ENGINE_TASK)
def write_report(result: ValidationResult, out_dir: Path, baseline: BaselineComparison | None = None) -> Path:
    """report.md, report.html, results.json and plots (``mdgate.report.markdown.write_report``),
    with the comparison with the baseline when one was made.
    """
    write_report_files(result, out_dir, baseline)
    return out_dir


@task(name="publish-error", **REGISTRY_TASK)
def publish_error(settings: Settings, claim: Claim, result: ValidationResult, criteria_sha256: str,
                  extra_tags: dict[str, str], status: Status = Status.ERROR) -> Publication:
    """Mark the version Error (or PendingReview) without a report (the report could not be
    written or stored).
    """
    return registry_for(settings).publish_error(claim, result, criteria_sha256, extra_tags, status)


@task(name="publish", **REGISTRY_TASK)
def publish(settings: Settings, claim: Claim, result: ValidationResult, report_dir: Path,
            criteria_sha256: str, extra_tags: dict[str, str], status: Status | None = None,
            reason: str | None = None) -> Publication:
    """Store the verdict in MLflow: validation run, description, tags, status last, alias
    (``status``/``reason``: a PendingReview instead of the result's verdict).
    """
    return registry_for(settings).publish(claim, result, report_dir, criteria_sha256, extra_tags, status, reason)


def store_verdict(settings: Settings, claim: Claim, decision: Decision, work: Path, sha: str,
                  extra: dict[str, str], source: str,
                  gate_config: GateConfig) -> tuple[Publication, Path | None, Decision]:
    """Write the report (with the comparison, when one was made) and publish the decision;
    returns the publication, the report folder (``None``: it could not be written) and the
    decision as published (an Error when the report could not be kept).

    Raises:
        ArtifactStoreError: the report could not be stored and the tracking server does not answer.
    """
    review_margin = settings.review_margin if settings.review else None
    try:
        report_dir: Path | None = write_report(decision.result, work / "report", decision.comparison)
    except OSError as e:
        report_dir = None
        reason = unpublished_reason(decision.result, f"[Errno {e.errno}] {e.strerror}", stored=False)
        decision = settle(error_result(reason, source, gate_config), review_margin=review_margin)
    if report_dir is not None:
        status = Status.PENDING_REVIEW if decision.review else None
        try:
            return (publish(settings, claim, decision.result, report_dir, sha, extra, status, decision.review),
                    report_dir, decision)
        except ArtifactStoreError as e:
            if not is_up(f"{settings.tracking_uri.rstrip('/')}/health"):
                raise
            cause = str(e).removeprefix("storing the report in the artifact store: ")
            reason = unpublished_reason(decision.result, cause, stored=True)
            decision = settle(error_result(reason, source, gate_config), review_margin=review_margin)
    return (publish_error(settings, claim, decision.result, sha, extra, Status(decision.status)), report_dir,
            decision)


def publish_prefect_artifacts(key: str, name: str, version: str, result: ValidationResult, report_dir: Path,
                              pub: Publication) -> None:
    """The Markdown report and the per-molecule metrics table, as artifacts of the flow run."""
    report = (report_dir / "report.md").read_text()
    header = (f"**{result.verdict.value}** — [validation run in MLflow]({pub.run_url}) · "
              f"report `{pub.report_uri}`\n\n")
    create_markdown_artifact(header + report, key=f"{key}-report",
                             description=f"mdgate report of {name} v{version}: {result.verdict.value}")
    rows = summary_rows(result)
    if rows:
        create_table_artifact(rows, key=f"{key}-molecules",
                              description=f"per-molecule MD metrics of {name} v{version}")
