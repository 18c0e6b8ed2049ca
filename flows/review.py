"""Human review in the gate flow: the Prefect review form (a pydantic ``RunInput``), waiting for
it, and resuming a waiting gate from ``mdgate review``.

Which results wait for a person is the engine's rule (``mdgate.checks.decision.review_reason``):
with ``MDGATE_REVIEW`` on, an Error, or a result with a required check that passes within
``MDGATE_REVIEW_MARGIN`` (relative) of its bound, ends ``PendingReview``. The gate flow then
pauses with :class:`ReviewInput` (``pause_flow_run(wait_for_input=...)``): the Prefect UI shows
the form on the paused run, and ``resume_flow_run(flow_run_id, run_input={...})`` resumes it
through the API. ``mdgate review`` records the decision in MLflow itself (so it works when the
flow run is gone) and then resumes the waiting run, which sees the decision already made.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from pydantic import Field

from flows.notify import notify_decision
from flows.settings import Settings
from flows.tasks import registry_for
from registry.types import Status

PENDING_REVIEW = Status.PENDING_REVIEW.value


class ReviewInput(RunInput):
    """The review form of a gate waiting for a person."""

    decision: Literal["approve", "reject"] = Field(description="approve: the version becomes Approved; "
                                                               "reject: Rejected")
    reason: str = Field(min_length=1, description="Why (recorded as mdgate.reason and in the audit trail)")
    reviewer: str = Field(default="", description="Your name (recorded as mdgate.decided_by = review/<name>)")


def wait_for_review(settings: Settings, name: str, version: str, flow_run: str | None) -> tuple[str, str]:
    """Pause the current gate flow run until a person submits :class:`ReviewInput`, then record
    the decision (unless ``mdgate review`` has already decided). Returns (final state name, message).
    """
    logger = get_run_logger()
    logger.info("%s/%s: PendingReview; waiting up to %g s for a decision (Prefect UI form, or "
                "`mdgate review %s %s --approve|--reject --reason ...`)", name, version,
                settings.review_timeout_s, name, version)
    try:
        decision = pause_flow_run(wait_for_input=ReviewInput, timeout=int(settings.review_timeout_s),
                                  poll_interval=settings.review_poll_s, key="review")
    except FlowPauseTimeout:
        return PENDING_REVIEW, (f"{name}/v{version}: no decision within {settings.review_timeout_s:g} s; "
                                f"decide with `mdgate review {name} {version}`")
    registry = registry_for(settings)
    info = registry.get_version(name, version)
    if info.status != Status.PENDING_REVIEW or (flow_run and info.flow_run != flow_run):
        status = info.status.value if info.status else "-"
        return status, f"{name}/v{version}: decided outside this run: {info.reason}"
    info = registry.review(name, version, decision.decision == "approve", decision.reason,
                           decision.reviewer or "prefect-ui", flow_run or "")
    notify_decision(settings, name, version, info.status.value if info.status else "-", info.reason,
                    decision.reviewer or "prefect-ui")
    return info.status.value if info.status else "-", f"{name}/v{version}: {info.reason}"


def resume_waiting_gate(flow_run: str | None, approve: bool, reason: str, by: str) -> str:
    """Resume the gate run that waits for a review of this version, if there is one (best effort);
    one line saying what happened.
    """
    try:
        run_id = UUID(flow_run or "")
    except ValueError:
        return "no gate flow run waits for this version"
    try:
        with get_client(sync_client=True) as client:
            run: Any = client.read_flow_run(run_id)
        if run.state is None or not run.state.is_paused():
            return f"gate flow run {run_id} is not waiting ({run.state.name if run.state else 'no state'})"
        resume_flow_run(run_id, run_input={"decision": "approve" if approve else "reject", "reason": reason,
                                           "reviewer": by})
    except Exception as e:  # gone, or Prefect unreachable: the decision is in MLflow already
        return f"gate flow run {run_id} not resumed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return f"gate flow run {run_id} resumed"
