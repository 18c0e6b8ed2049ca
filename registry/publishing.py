"""Publishing a verdict: the validation run, description, tags, status, and the alias."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from mdgate.results import ValidationResult, Verdict
from registry import types as T
from registry.base import gist, iso, num, one_line, quote, translate_errors
from registry.claims import ClaimsMixin
from registry.errors import ArtifactStoreError, PermanentRegistryError, TransientRegistryError
from registry.summary import description_markdown, verdict_tags
from registry.types import AUTOMATIC, AuditEvent, Claim, EventKind, Publication, Status, VersionInfo, utcnow


class PublishingMixin(ClaimsMixin):
    """Store verdicts on versions and keep the ``approved`` alias on the newest Approved one."""

    def publish(self, claim: Claim, result: ValidationResult, report_dir: Path, criteria_sha256: str,
                extra_tags: dict[str, str] | None = None, status: Status | None = None,
                reason: str | None = None) -> Publication:
        """Store a verdict: validation run (params, metrics, artifacts), description, tags,
        status, alias, and the audit trail's events. The status is written last, after everything
        else is stored.

        Args:
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
        self.check_claim(claim)
        run_id, experiment_id, artifact_uri = self.log_validation_run(claim, result, report_dir,
                                                                      criteria_sha256)
        run_url = f"{self.tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"
        report_uri = f"{artifact_uri}/report.md"
        info = self.check_claim(claim)
        status = status or Status(result.verdict.value)
        reason = one_line(reason if reason is not None else result.reason)
        with translate_errors(f"describing {claim.name}/{claim.version}"):
            self.client.update_model_version(
                claim.name, claim.version,
                description=description_markdown(info.description, result, run_url, report_uri),
            )
        tags = {
            T.REASON: reason, T.REPORT: report_uri, T.VALIDATION_RUN: run_id, T.DECISION: "automatic",
            T.FLOW_RUN: claim.flow_run or "", T.CRITERIA_SHA256: criteria_sha256,
            **(extra_tags or {}), T.UPDATED_AT: iso(utcnow()),
        }
        self.set_figure_tags(info, result)
        self.set_tags(claim.name, claim.version, tags)
        # The audit entry before the status: a failure here retries the whole publication while
        # the claim still holds (at worst an entry twice, never a status without its entry).
        self.record(AuditEvent(model=claim.name, version=claim.version, kind=EventKind.VERDICT, status=status.value,
                               reason=reason, criteria_sha256=criteria_sha256, flow_run=claim.flow_run or "",
                               validation_run=run_id))
        # The status last; the lease stays until then, so a gate that dies before this line
        # leaves the version Running with its lease, which runs out: the sweep gates it again.
        self.set_tags(claim.name, claim.version, {T.STATUS: status.value})
        self._release(claim)
        alias = self.update_alias(claim.name, flow_run=claim.flow_run or "",
                                  reason=f"v{claim.version} {status.value} by the gate")
        return Publication(run_id=run_id, run_url=run_url, report_uri=report_uri, status=status,
                           alias_version=alias)

    def publish_error(self, claim: Claim, result: ValidationResult, criteria_sha256: str,
                      extra_tags: dict[str, str] | None = None, status: Status = Status.ERROR) -> Publication:
        """Mark the version Error when its report cannot be written or stored (disk full,
        artifact store unwritable): the one status set without a report, with the reason saying so.

        Raises:
            LeaseLostError: another gate took the version over.
        """
        if result.verdict != Verdict.ERROR:
            raise ValueError("only an Error is published without a report")
        info = self.check_claim(claim)
        with translate_errors(f"clearing the report tags of {claim.name}/{claim.version}"):
            for key in (T.REPORT, T.VALIDATION_RUN):
                with contextlib.suppress(MlflowException):  # absent: nothing to clear
                    self.client.delete_model_version_tag(claim.name, claim.version, key)
        self.set_figure_tags(info, result)
        self.set_tags(claim.name, claim.version, {
            T.REASON: one_line(result.reason), T.FLOW_RUN: claim.flow_run or "", T.DECISION: "automatic",
            T.CRITERIA_SHA256: criteria_sha256, **(extra_tags or {}), T.UPDATED_AT: iso(utcnow()),
        })
        self.record(AuditEvent(model=claim.name, version=claim.version, kind=EventKind.VERDICT, status=status.value,
                               reason=one_line(result.reason), criteria_sha256=criteria_sha256,
                               flow_run=claim.flow_run or ""))
        self.set_tags(claim.name, claim.version, {T.STATUS: status.value})
        self._release(claim)
        alias = self.update_alias(claim.name, flow_run=claim.flow_run or "",
                                  reason=f"v{claim.version} {status.value} by the gate")
        return Publication(run_id="", run_url="", report_uri="", status=status, alias_version=alias)

    def set_figure_tags(self, info: VersionInfo, result: ValidationResult) -> None:
        """Write the verdict's searchable figures (:func:`registry.summary.verdict_tags`) and
        remove those this verdict has none of, so that a re-gate leaves no stale figure behind.
        Tags that already hold the value (``mdgate.n_parameters`` from registration) are not
        written again.
        """
        with translate_errors(f"tagging {info.name}/{info.version}"):
            for key, value in verdict_tags(result).items():
                if value is not None:
                    if info.tags.get(key) != value:
                        self.client.set_model_version_tag(info.name, info.version, key, value)
                elif key in info.tags:
                    with contextlib.suppress(MlflowException):  # removed meanwhile
                        self.client.delete_model_version_tag(info.name, info.version, key)

    def _release(self, claim: Claim) -> None:
        with translate_errors(f"releasing the lease of {claim.name}/{claim.version}"):
            self.client.delete_model_version_tag(claim.name, claim.version, T.LEASE_EXPIRES_AT)

    def log_validation_run(self, claim: Claim, result: ValidationResult, report_dir: Path,
                           criteria_sha256: str) -> tuple[str, str, str]:
        """Log the validation run (experiment :attr:`experiment`); return its id, experiment id
        and artifact URI.
        """
        experiment_id = self.experiment_id()
        with translate_errors("logging the validation run"):
            run = self.client.create_run(
                experiment_id, run_name=f"gate/{claim.name}/v{claim.version}",
                tags={"mdgate.model": claim.name, "mdgate.version": claim.version,
                      "mdgate.checks.verdict": result.verdict.value, "mdgate.claim": str(claim.generation),
                      "mdgate.flow_run": claim.flow_run or "", T.CRITERIA_SHA256: criteria_sha256,
                      "mlflow.note.content": result.reason},
            )
            run_id = run.info.run_id
            params = run_params(result)
            metrics = run_metrics(result)
            stamp = int(time.time() * 1000)
            for i in range(0, max(len(params), len(metrics)), 100):
                self.client.log_batch(
                    run_id, params=[Param(k, v) for k, v in params[i:i + 100]],
                    metrics=[Metric(k, v, stamp, 0) for k, v in metrics[i:i + 100]],
                )
        try:
            with translate_errors("storing the report in the artifact store"):
                self.client.log_artifacts(run_id, str(report_dir))
        except TransientRegistryError as e:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, "FAILED")
            raise ArtifactStoreError(f"storing the report in the artifact store: {gist(str(e.__cause__ or e))}") \
                from e.__cause__
        with translate_errors("logging the validation run"):
            self.client.set_terminated(run_id, "FINISHED" if result.verdict != Verdict.ERROR else "FAILED")
        return run_id, experiment_id, run.info.artifact_uri

    def update_alias(self, name: str, by: str = AUTOMATIC, reason: str = "", flow_run: str = "",
                     kind: EventKind = EventKind.ALIAS) -> str | None:
        """Point the ``approved`` alias at the newest Approved version (remove it if none); a
        move is recorded in the audit trail (``by``, ``reason``).
        """
        approved = self.search_versions(f"name={quote(name)} AND tags.`{T.STATUS}` = 'Approved'")
        newest = max((v.version for v in approved), key=num, default=None)
        before = self.alias_version(name)
        with translate_errors(f"setting alias {T.APPROVED_ALIAS} of {name}"):
            if newest is not None and newest != before:
                self.client.set_registered_model_alias(name, T.APPROVED_ALIAS, newest)
            elif newest is None and before is not None:
                self.client.delete_registered_model_alias(name, T.APPROVED_ALIAS)
        if newest != before:
            self.record(AuditEvent(model=name, version=newest or before or "", kind=kind, decided_by=by,
                                   reason=reason, flow_run=flow_run, alias_from=before or "",
                                   alias_to=newest or ""))
        return newest

    def review(self, name: str, version: str, approve: bool, reason: str, by: str,
               flow_run: str = "") -> VersionInfo:
        """A person's decision on a version (any status but a live Running): sets
        ``mdgate.status``, ``mdgate.decided_by`` (the person), ``mdgate.decision`` (``human``) and
        ``mdgate.reason``, moves or keeps the alias, and records both in the audit trail.

        Raises:
            PermanentRegistryError: no reason or reviewer given, or a gate is running on the version.
        """
        if not reason.strip() or not by.strip():
            raise PermanentRegistryError("a review needs a reason and a reviewer: pass --reason and --by")
        info = self.get_version(name, version)
        if info.status == Status.RUNNING and not info.lease_expired(utcnow(), 0):
            raise PermanentRegistryError(
                f"{info.ref} is being gated (flow run {info.flow_run}); review it once the gate has published")
        status = Status.APPROVED if approve else Status.REJECTED
        was = info.status.value if info.status else "never gated"
        text = one_line(f"{status.value} by {by}: {reason} (was {was})")
        self.set_tags(name, str(version), {T.DECIDED_BY: by, T.DECISION: "human", T.REASON: text,
                                           T.UPDATED_AT: iso(utcnow())})
        self.set_tags(name, str(version), {T.STATUS: status.value})
        self.record(AuditEvent(model=name, version=str(version), kind=EventKind.REVIEW, status=status.value,
                               decided_by=by, reason=text, criteria_sha256=info.criteria_sha256 or "",
                               flow_run=flow_run or info.flow_run or "", validation_run=info.validation_run or ""))
        self.update_alias(name, by=by, reason=f"review of v{version}: {reason}", flow_run=flow_run)
        return self.get_version(name, version)

    def rollback(self, name: str, reason: str, by: str) -> tuple[str, str | None]:
        """Take ``approved`` back from its version: that version is marked Rejected by ``by``
        (so the alias, always the newest Approved version, moves to the previous one) and both
        are recorded in the audit trail. Returns (the version rolled back, the alias now).

        Raises:
            PermanentRegistryError: no alias to roll back, no other Approved version, or no
                reason or reviewer given.
        """
        if not reason.strip() or not by.strip():
            raise PermanentRegistryError("a rollback needs a reason and a reviewer: pass --reason and --by")
        current = self.alias_version(name)
        if current is None:
            raise PermanentRegistryError(f"{name} has no '{T.APPROVED_ALIAS}' alias to roll back")
        approved = self.search_versions(f"name={quote(name)} AND tags.`{T.STATUS}` = 'Approved'")
        if not [v for v in approved if v.version != current]:
            raise PermanentRegistryError(f"{name} has no Approved version before v{current} to roll back to; "
                                         f"reject v{current} with `mdgate review` instead")
        info = self.get_version(name, current)
        text = one_line(f"rolled back by {by}: {reason} (was Approved)")
        self.set_tags(name, current, {T.DECIDED_BY: by, T.DECISION: "human", T.REASON: text,
                                      T.UPDATED_AT: iso(utcnow())})
        self.set_tags(name, current, {T.STATUS: Status.REJECTED.value})
        self.record(AuditEvent(model=name, version=current, kind=EventKind.ROLLBACK, status=Status.REJECTED.value,
                               decided_by=by, reason=text, criteria_sha256=info.criteria_sha256 or ""))
        alias = self.update_alias(name, by=by, reason=f"rollback of v{current}: {reason}")
        return current, alias


def run_params(result: ValidationResult) -> list[tuple[str, str]]:
    """The config as applied, flattened (``md.n_steps``, ``criteria.min_force_r2.bound``, ...)."""
    out: list[tuple[str, str]] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out.append((prefix, str(value)[:6000]))

    walk("", result.criteria.get("config", {}))
    out.append(("criteria_sha256", str(result.criteria.get("sha256", ""))))
    out.append(("model.n_parameters", str(result.model.n_parameters)))
    out.append(("model.parent", str(result.model.parent)))
    return out


def _metric_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)


def run_metrics(result: ValidationResult) -> list[tuple[str, float]]:
    """Per-molecule summary figures (``<molecule>/<metric>``), accuracy and timing, finite only."""
    out: list[tuple[str, float]] = []

    def add(key: str, value: object) -> None:
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out.append((_metric_key(key), float(value)))

    for mol in result.molecules:
        for key, value in mol.summary.items():
            add(f"{mol.name}/{key}", value)
        add(f"{mol.name}/steps_done", min((r.steps_done for r in mol.replicas), default=0))
        add(f"{mol.name}/passed", mol.passed)
    acc = result.accuracy
    if acc is not None:
        for key in ("force_r2", "force_mae_eV_per_A", "force_rmse_eV_per_A", "energy_mae_meV_per_atom"):
            add(f"accuracy/{key}", getattr(acc, key))
        for name, values in acc.per_molecule.items():
            for key, value in values.items():
                add(f"accuracy/{name}/{key}", value)
    t = result.timing
    for key in ("total_s", "md_s", "accuracy_s", "ms_per_step", "atom_steps_per_s"):
        add(f"timing/{key}", getattr(t, key))
    add("model/n_parameters", result.model.n_parameters)
    add("model/compression_ratio", result.model.compression_ratio)
    return out
