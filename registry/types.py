"""mdgate's own view of registry objects (never raw MLflow entities), and the tag names."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from mdgate.potentials import ModelMeta

# Registry state (a contract, design.md section 4), on the model version. The verdict's figures
# are metrics of a logged model, not tags (registry.figures).
STATUS = "mdgate.status"
REASON = "mdgate.reason"
REPORT = "mdgate.report"
"""``runs:/<validation run>/report.md``."""
VALIDATION_RUN = "mdgate.validation_run"
"""Written by earlier gates only: the run is in :data:`REPORT`."""
FLOW_RUN = "mdgate.flow_run"
CRITERIA_SHA256 = "mdgate.criteria_sha256"
UPDATED_AT = "mdgate.updated_at"
DECIDED_BY = "mdgate.decided_by"
"""``stage/check`` that decided an automatic rejection, or ``review/<person>`` when a person
decided (``mdgate review``, the Prefect review form, ``mdgate rollback``); absent otherwise."""
REVIEW_PREFIX = "review/"
# The lease of a Running version: claim generation and expiry (ISO 8601, UTC).
CLAIM = "mdgate.claim"
LEASE_EXPIRES_AT = "mdgate.lease_expires_at"
# Which validation/reference set a gate used, when not the configured one.
MOLECULES = "mdgate.molecules"
REFERENCE = "mdgate.reference"
# Model metadata: params of the version's registration run (a version tag of the same name
# overrides it).
CUTOFF_A = "mdgate.cutoff_A"
ENERGY_UNIT = "mdgate.energy_unit"
POSITION_UNIT = "mdgate.position_unit"
ENERGY_KEY = "mdgate.energy_key"
FORCES_KEY = "mdgate.forces_key"
PARENT = "mdgate.parent"
LEVEL_OF_THEORY = "mdgate.level_of_theory"
N_PARAMETERS = "mdgate.n_parameters"
PARENT_N_PARAMETERS = "mdgate.parent_n_parameters"
MODEL_SHA256 = "mdgate.model_sha256"

#: metadata tag → :class:`ModelMeta` field.
META_TAGS = {
    CUTOFF_A: "cutoff_A", ENERGY_UNIT: "energy_unit", POSITION_UNIT: "position_unit",
    ENERGY_KEY: "energy_key", FORCES_KEY: "forces_key", PARENT: "parent",
    LEVEL_OF_THEORY: "level_of_theory", PARENT_N_PARAMETERS: "parent_n_parameters",
}

APPROVED_ALIAS = "approved"
DESCRIPTION_MARKER = "<!-- mdgate verdict -->"


class Status(StrEnum):
    """``mdgate.status``: Pending → Running → Approved | Rejected | Error | PendingReview.

    ``PendingReview``: the gate finished but a person decides (a result within the review
    margin of a bound, or an Error, with review on); ``mdgate review`` or the Prefect review form
    turns it into Approved or Rejected.
    """

    PENDING = "Pending"
    RUNNING = "Running"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    ERROR = "Error"
    PENDING_REVIEW = "PendingReview"

    @property
    def is_final(self) -> bool:
        """The gate has published its outcome (a verdict, or PendingReview: no gate runs again
        unless forced; a person decides).
        """
        return self in (Status.APPROVED, Status.REJECTED, Status.ERROR, Status.PENDING_REVIEW)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def parse_time(value: str | None) -> datetime | None:
    """Parse an ISO 8601 tag value (``None`` when absent or malformed)."""
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class VersionInfo(BaseModel):
    """A registered model version as the gate sees it."""

    name: str
    version: str
    status: Status | None = None
    """``None``: never gated (no ``mdgate.status`` tag)."""
    reason: str = ""
    updated_at: datetime | None = None
    lease_expires_at: datetime | None = None
    claim: int = 0
    """Claim generation: how many gates have claimed this version."""
    criteria_sha256: str | None = None
    validation_run: str | None = None
    report: str | None = None
    flow_run: str | None = None
    source: str = ""
    run_id: str | None = None
    created_at: datetime | None = None
    description: str = ""
    aliases: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``name/version``."""
        return f"{self.name}/{self.version}"

    def lease_expired(self, now: datetime, lease_s: float) -> bool:
        """A Running version whose lease ran out (no expiry tag: ``updated_at`` + ``lease_s``)."""
        if self.status != Status.RUNNING:
            return False
        expires = self.lease_expires_at
        if expires is None:
            start = self.updated_at or self.created_at
            if start is None:
                return True
            return (now - start).total_seconds() > lease_s
        return now >= expires

    def due(self, now: datetime, lease_s: float) -> bool:
        """Should a sweep start a gate for this version?"""
        return self.status in (None, Status.PENDING) or self.lease_expired(now, lease_s)


class Claim(BaseModel):
    """The lease a gate holds on a version while it runs."""

    name: str
    version: str
    generation: int
    """Claim generation (1 for the first gate of a version)."""
    flow_run: str | None = None
    lease_s: float
    expires_at: datetime


class ClaimOutcome(BaseModel):
    """Result of trying to claim a version: the claim, or why there is none."""

    claim: Claim | None = None
    status: Status | None = None
    """The status found when the claim was refused."""
    reason: str = ""


class Candidate(BaseModel):
    """A version's model downloaded for gating, with its metadata and validation sets."""

    name: str
    version: str
    model_path: Path
    """Local model file (a pickled ``torch.nn.Module``)."""
    meta: ModelMeta
    molecules: Path | None = None
    """The model's own validation set (registered-model tag ``mdgate.molecules``), if any."""
    reference: Path | None = None
    """The model's own reference set (registered-model tag ``mdgate.reference``), if any."""
    molecules_source: str | None = None
    reference_source: str | None = None


class Publication(BaseModel):
    """What publishing a verdict stored."""

    run_id: str
    run_url: str
    report_uri: str
    status: Status
    alias_version: str | None = None
    """The version the ``approved`` alias points at afterwards (``None``: no approved version)."""


#: Who decides automatically, in the audit trail.
AUTOMATIC = "mdgate"


class EventKind(StrEnum):
    """Kinds of events of the audit trail."""

    VERDICT = "verdict"
    """The gate published an outcome (Approved, Rejected, Error, PendingReview)."""
    REVIEW = "review"
    """A person approved or rejected a version."""
    ALIAS = "alias"
    """The ``approved`` alias moved (``alias_from`` → ``alias_to``; empty: none)."""
    REGATE = "regate"
    """A version that had an outcome is gated again (forced)."""
    ROLLBACK = "rollback"
    """A person took ``approved`` back from its version (marked Rejected)."""


class AuditEvent(BaseModel):
    """One entry of the audit trail (one MLflow run of the ``mdgate-audit`` experiment)."""

    model: str
    version: str
    kind: EventKind
    status: str = ""
    """The version's status after the event (empty for an alias move)."""
    decided_by: str = AUTOMATIC
    """``mdgate`` for the gate's own decisions, else the person."""
    reason: str = ""
    criteria_sha256: str = ""
    flow_run: str = ""
    validation_run: str = ""
    alias_from: str = ""
    alias_to: str = ""
    model_ran: str = ""
    """Where the candidate's code ran for a verdict (the engine's process, or the model process
    and its confinement; ``results.json``'s ``model.runs_in``)."""
    at: datetime = Field(default_factory=utcnow)
    run_id: str = ""
    """The audit run (set when read back)."""
