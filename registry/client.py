"""The registry adapter's facade: :class:`Registry`, one :class:`~registry.connection.Connection`
and a method per operation, each a one-line delegation to the module that does it: version reads
(:mod:`registry.versions`), the verdicts' figures (:mod:`registry.figures`), claims and leases
(:mod:`registry.claims`), publishing verdicts (:mod:`registry.publishing`), the alias
(:mod:`registry.aliases`), a person's decisions (:mod:`registry.reviews`), the audit trail
(:mod:`registry.audit`) and webhooks (:mod:`registry.webhooks`).

Every method returns mdgate's own types and raises :mod:`registry.errors`, never raw MLflow
exceptions; nothing outside ``registry/`` touches MLflow client objects (tests read
:attr:`Registry.client` to set up and inspect the server).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookEventStr

from mdgate.results import ValidationResult
from registry import aliases, audit, claims, figures, publishing, reviews, versions, webhooks
from registry import types as T
from registry.claims import CLAIM_EXPERIMENT
from registry.connection import Connection, connect
from registry.types import AUTOMATIC, AuditEvent, Claim, ClaimOutcome, EventKind, Publication, Status, VersionInfo

__all__ = ["CLAIM_EXPERIMENT", "Registry"]


class Registry:
    """The MLflow model registry as mdgate uses it.

    Args:
        tracking_uri: the MLflow tracking server (``http://...``; webhooks only fire through one).
        experiment: experiment holding the validation runs.
    """

    def __init__(self, tracking_uri: str, experiment: str = "mdgate"):
        # Every multi-tag write goes through set_tags, looked up on each call (see Connection.tag_writer).
        self.conn: Connection = connect(tracking_uri, experiment, tag_writer=self._write_tags)

    def _write_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        self.set_tags(name, version, tags)

    @property
    def client(self) -> MlflowClient:
        """MLflow's client (for tests and tools that set up or inspect the server)."""
        return self.conn.mlflow

    @property
    def tracking_uri(self) -> str:
        """The tracking server, without a trailing slash."""
        return self.conn.tracking_uri

    @property
    def experiment(self) -> str:
        """The experiment holding the validation runs."""
        return self.conn.experiment

    # ------------------------------------------------------------------ reads (registry.versions)

    def get_version(self, name: str, version: str | int) -> VersionInfo:
        """One version (:func:`registry.versions.get_version`)."""
        return versions.get_version(self.conn, name, version)

    def search_versions(self, filter_string: str = "") -> list[VersionInfo]:
        """Versions matching an MLflow filter (:func:`registry.versions.search_versions`)."""
        return versions.search_versions(self.conn, filter_string)

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of a model, newest first (:func:`registry.versions.list_versions`)."""
        return versions.list_versions(self.conn, name)

    def versions_where(self, name: str, filter_string: str) -> list[VersionInfo]:
        """Versions whose verdict's figures match a ``search_logged_models`` filter
        (:func:`registry.figures.versions_where`).
        """
        return figures.versions_where(self.conn, name, filter_string)

    def figures(self, name: str) -> dict[str, dict[str, float]]:
        """The verdict's figures of each gated version (:func:`registry.figures.figures_by_version`)."""
        return figures.figures_by_version(self.conn, name)

    def model_tags(self, name: str) -> dict[str, str]:
        """Tags of a registered model (:func:`registry.versions.model_tags`)."""
        return versions.model_tags(self.conn, name)

    def alias_version(self, name: str, alias: str = T.APPROVED_ALIAS) -> str | None:
        """The version an alias points at (:func:`registry.versions.alias_version`)."""
        return versions.alias_version(self.conn, name, alias)

    def versions_to_gate(self, lease_s: float, now: datetime | None = None) -> list[VersionInfo]:
        """Versions a sweep should gate (:func:`registry.versions.versions_to_gate`)."""
        return versions.versions_to_gate(self.conn, lease_s, now)

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on a version, in order (:func:`registry.versions.write_tags`)."""
        versions.write_tags(self.conn, name, version, tags)

    # ------------------------------------------------------------------ claims (registry.claims)

    def claim(self, name: str, version: str, lease_s: float, flow_run: str | None = None,
              force: bool = False, queued: bool = False) -> ClaimOutcome:
        """Take the lease on a version, or say why not (:func:`registry.claims.claim`)."""
        return claims.claim(self.conn, name, version, lease_s, flow_run, force, queued)

    def check_claim(self, claim: Claim) -> VersionInfo:
        """The version, if ``claim`` still holds it (:func:`registry.claims.check_claim`)."""
        return claims.check_claim(self.conn, claim)

    def renew(self, claim: Claim) -> Claim:
        """Extend the lease of a claim (:func:`registry.claims.renew`)."""
        return claims.renew(self.conn, claim)

    # ------------------------------------------------------------------ verdicts and decisions

    def publish(self, claim: Claim, result: ValidationResult, report_dir: Path, criteria_sha256: str,
                extra_tags: dict[str, str] | None = None, status: Status | None = None,
                reason: str | None = None) -> Publication:
        """Store a verdict, the status last (:func:`registry.publishing.publish`)."""
        return publishing.publish(self.conn, claim, result, report_dir, criteria_sha256, extra_tags, status, reason)

    def publish_error(self, claim: Claim, result: ValidationResult, criteria_sha256: str,
                      extra_tags: dict[str, str] | None = None, status: Status = Status.ERROR) -> Publication:
        """Mark a version Error without a report (:func:`registry.publishing.publish_error`)."""
        return publishing.publish_error(self.conn, claim, result, criteria_sha256, extra_tags, status)

    def update_alias(self, name: str, by: str = AUTOMATIC, reason: str = "", flow_run: str = "",
                     kind: EventKind = EventKind.ALIAS) -> str | None:
        """Point ``approved`` at the newest Approved version (:func:`registry.aliases.update_alias`)."""
        return aliases.update_alias(self.conn, name, by, reason, flow_run, kind)

    def review(self, name: str, version: str, approve: bool, reason: str, by: str,
               flow_run: str = "") -> VersionInfo:
        """A person's decision on a version (:func:`registry.reviews.review`)."""
        return reviews.review(self.conn, name, version, approve, reason, by, flow_run)

    def rollback(self, name: str, reason: str, by: str) -> tuple[str, str | None]:
        """Take ``approved`` back from its version (:func:`registry.reviews.rollback`)."""
        return reviews.rollback(self.conn, name, reason, by)

    # ------------------------------------------------------------------ audit trail (registry.audit)

    def record(self, event: AuditEvent) -> str:
        """Append an event to the audit trail (:func:`registry.audit.record`)."""
        return audit.record(self.conn, event)

    def history(self, name: str, version: str | None = None) -> list[AuditEvent]:
        """The audit trail of a model or version, oldest first (:func:`registry.audit.history`)."""
        return audit.history(self.conn, name, version)

    # ------------------------------------------------------------------ webhooks (registry.webhooks)

    def ensure_webhook(self, name: str, url: str, secret: str,
                       events: tuple[WebhookEventStr, ...] = ("model_version.created",)) -> str:
        """Create or update a webhook; return its id (:func:`registry.webhooks.ensure_webhook`)."""
        return webhooks.ensure_webhook(self.conn, name, url, secret, events)

    def set_webhook_active(self, webhook_id: str, active: bool) -> None:
        """Enable or disable a webhook (:func:`registry.webhooks.set_webhook_active`)."""
        webhooks.set_webhook_active(self.conn, webhook_id, active)

    def webhook_id(self, name: str) -> str | None:
        """The id of the webhook called ``name`` (:func:`registry.webhooks.webhook_id`)."""
        return webhooks.webhook_id(self.conn, name)
