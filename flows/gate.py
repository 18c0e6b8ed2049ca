"""The gate flow: claim → fetch → load → sanity → pes → MD (one task per lane of molecules) → accuracy →
oracle → (baseline) → report → publish.

Each task calls one engine (``mdgate``) or registry function; the decision is the engine's
(``mdgate.checks.decision.settle``): this flow fetches the baseline's figures, publishes, and
pauses for a review. Final states are named after the verdict: ``Completed(name="Approved")`` and
``Completed(name="Rejected")`` (the gate did its job: a rejected model is an expected outcome,
not an orchestration failure), and ``Failed(name="Error")`` when the model could not be validated
(bad artifact, model without forces, MD timeout, internal error): that needs a person. A version
that is already gated or being gated ends ``Completed(name="Skipped")``. With human review on
(``MDGATE_REVIEW``), a borderline result or an Error is published as ``PendingReview`` and the
flow pauses for a person's decision (``flows/review.py``); it ends named after that decision, or
``Completed(name="PendingReview")`` when nobody decided in time. Registry outages (and an
unreachable Dask cluster with ``MDGATE_TASK_RUNNER=dask``) fail the flow and leave the version
Running: the sweep gates it again once its lease expires.
"""

from __future__ import annotations

import shutil
import traceback
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State

from flows.champion import baseline_figures, comparison_rows
from flows.dask_tasks import DaskUnavailableError
from flows.measure import effective_config, run_measurement
from flows.notify import notify_decision
from flows.publish import publish_prefect_artifacts, store_verdict
from flows.review import wait_for_review
from flows.settings import GATE_FLOW, Settings, load_settings
from flows.tasks import REGISTRY_TASK, fetch_candidate, registry_for, slug
from mdgate.checks.decision import Decision, settle
from mdgate.config import GateConfig, load_config
from mdgate.errors import MdgateError
from mdgate.results import BaselineComparison, ValidationResult, Verdict
from mdgate.runner import error_result
from registry.errors import HostStorageError, LeaseLostError, TransientRegistryError
from registry.types import Claim, ClaimOutcome, Publication, Status

SKIPPED = "Skipped"


@task(name="claim", **REGISTRY_TASK)
def claim_version(settings: Settings, name: str, version: str, flow_run: str | None,
                  force: bool) -> ClaimOutcome:
    """Take the lease on the version (status → Running)."""
    return registry_for(settings).claim(name, version, settings.lease_s, flow_run, force)


@flow(name=GATE_FLOW, flow_run_name="gate/{name}/v{version}", persist_result=False, validate_parameters=True)
def gate_model_version(name: str, version: str, force: bool = False, config: str | None = None) -> State:
    """Gate one registered model version and mark it Approved, Rejected or Error in MLflow.

    Args:
        name: registered model name.
        version: model version.
        force: gate again even if the version already has a verdict.
        config: gate config YAML (default: ``MDGATE_CONFIG``, else the packaged defaults).
    """
    settings = load_settings()
    gate_config = load_config(config or settings.config)
    run_id = current_flow_run.get_id()
    outcome = claim_version(settings, name, str(version), run_id, force)
    if outcome.claim is None:
        get_run_logger().info("not gating %s/%s: %s", name, version, outcome.reason)
        return Completed(name=SKIPPED, message=f"{name}/v{version}: {outcome.reason}")
    claim = outcome.claim
    key = f"{slug(name)}-v{slug(str(version))}"
    work = (settings.home / "work" / f"{key}-{claim.generation}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    source = f"{name} v{version}"
    decision, extra = decide_version(settings, claim, gate_config, work, key, source)
    pub, report_dir, published = store_verdict(settings, claim, decision, work, gate_config.sha256(), extra, source,
                                               gate_config)
    announce(settings, claim, key, published, decision.comparison, report_dir, pub)
    shutil.rmtree(work, ignore_errors=True)
    if pub.status == Status.PENDING_REVIEW:
        final, message = wait_for_review(settings, name, str(version), run_id)
        return Completed(name=final, message=message)
    message = f"{name}/v{version}: {published.result.reason}"
    if published.result.verdict == Verdict.ERROR:
        return Failed(name=Verdict.ERROR.value, message=message)
    return Completed(name=published.result.verdict.value, message=message)


def decide_version(settings: Settings, claim: Claim, gate_config: GateConfig, work: Path, key: str,
                   source: str) -> tuple[Decision, dict[str, str]]:
    """Measure the version (:func:`measure_version`), obtain its baseline's figures when a champion
    comparison is asked for and it passed, and settle its status. Returns the decision and the
    tags naming the model's own validation sets.
    """
    result, extra, applied = measure_version(settings, claim, gate_config, work, key, source)
    baseline = None
    if result.verdict == Verdict.APPROVED and settings.champion:
        baseline = baseline_figures(settings, claim, gate_config.sha256(), applied, work, key)
    review_margin = settings.review_margin if settings.review else None
    return settle(result, baseline=baseline, rules=settings.champion, review_margin=review_margin), extra


def measure_version(settings: Settings, claim: Claim, gate_config: GateConfig, work: Path, key: str,
                    source: str) -> tuple[ValidationResult, dict[str, str], GateConfig]:
    """Fetch the candidate and measure it (``flows.measure.run_measurement``) under the configured
    criteria with its own validation sets. Returns the result (an Error when it could not be
    measured), the tags naming those sets, and the config as applied.

    Raises:
        TransientRegistryError, LeaseLostError, DaskUnavailableError: outages, not outcomes (the
            version stays Running and is gated again once its lease expires).
    """
    try:
        candidate = fetch_candidate(settings, claim.name, claim.version, work)
        config, extra = effective_config(gate_config, candidate)
        return run_measurement(settings, claim, candidate, config, work, key, source), extra, config
    except (TransientRegistryError, LeaseLostError, DaskUnavailableError):
        raise
    except (HostStorageError, MdgateError) as e:
        reason = str(e)
    except Exception as e:  # a bug must not leave the version Running until its lease expires
        get_run_logger().error("gate failed: %s", traceback.format_exc())
        reason = f"internal error: {type(e).__name__}: {e}"
    return error_result(reason, source, gate_config), {}, gate_config


def announce(settings: Settings, claim: Claim, key: str, decision: Decision, comparison: BaselineComparison | None,
             report_dir: Path | None, pub: Publication) -> None:
    """The flow run's artifacts (report, metrics, the comparison with the baseline), the log line
    and the notification of the published decision.
    """
    name, version, result = claim.name, claim.version, decision.result
    if report_dir is not None:
        publish_prefect_artifacts(key, name, version, result, report_dir, pub)
    if comparison is not None and comparison.comparisons:
        create_table_artifact(comparison_rows(comparison), key=f"{key}-champion",
                              description=f"{name} v{version} against its {comparison.title}")
    get_run_logger().info("%s/%s: %s: %s (validation run %s)", name, version, pub.status.value, result.reason,
                          pub.run_url)
    # A PendingReview's reason is the one published with it (the review's, or the Error's without a report).
    reason = (result.reason if pub.status != Status.PENDING_REVIEW
              else registry_for(settings).get_version(name, version).reason)
    notify_decision(settings, name, version, pub.status.value, reason)
