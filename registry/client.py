"""A thin typed adapter over ``MlflowClient``: versions, the status lifecycle, validation runs.

Every method returns mdgate's own types and raises :mod:`registry.errors` (transient or
permanent), never raw MLflow exceptions.

The status tag is the lease. A claim is made race-safe by an atomic create: claim number ``g``
of a version is the MLflow experiment ``mdgate-claims/<name>/v<version>/<g>``, and experiment
names are unique in MLflow's SQL store, so of any number of gates that read the same state and
try to claim, exactly one succeeds. The experiment is deleted at once (its name stays taken).

The claim's tags are separate writes, so a gate may read a version while another gate is
writing its claim: the claim number is written after the status (Running, with its lease), so a
reader that sees the new number also sees a live lease and backs off, and one that sees the old
number tries the same lock and loses. The flow run is written last: whoever finds its own flow
run there also finds the claim number it adopts.
"""

from __future__ import annotations

import contextlib
import errno
import math
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mdgate.results import ValidationResult, Verdict
from registry import types as T
from registry.errors import (
    ArtifactStoreError,
    HostStorageError,
    LeaseLostError,
    PermanentRegistryError,
    RegistryError,
    TransientRegistryError,
    VersionNotFoundError,
)
from registry.summary import description_markdown, verdict_tags
from registry.types import Claim, ClaimOutcome, Publication, Status, VersionInfo, parse_time, utcnow

TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                   "DEADLINE_EXCEEDED", "SERVICE_UNDER_MAINTENANCE", "ABORTED"}
CLAIM_EXPERIMENT = "mdgate-claims/{name}/v{version}/{generation}"
#: OS errors of the gate host's own storage: retrying a request does not help.
LOCAL_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR, errno.EISDIR,
                        errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Re-raise MLflow and network errors as :class:`RegistryError` subclasses, chained."""
    try:
        yield
    except RegistryError:
        raise
    except MlflowException as e:
        code = str(getattr(e, "error_code", "") or "")
        msg = (str(e.message if hasattr(e, "message") else e).splitlines() or [""])[0][:300]
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise VersionNotFoundError(f"{what}: {msg}") from e
        if code in TRANSIENT_CODES:
            raise TransientRegistryError(f"{what}: {msg}") from e
        raise PermanentRegistryError(f"{what}: {msg}") from e
    except OSError as e:  # requests' ConnectionError and timeouts are OSErrors
        if e.errno in LOCAL_STORAGE_ERRNOS and not isinstance(e, requests.RequestException):
            raise HostStorageError(f"{what}: the gate host cannot write {e.filename or 'its files'} "
                                   f"([Errno {e.errno}] {e.strerror})") from e
        raise TransientRegistryError(f"{what}: {type(e).__name__}: {e}") from e


def gist(text: str) -> str:
    """The gist of a request error: urllib3's "Caused by X('...')" text, an OS error, else its start."""
    found = re.search(r"Caused by \w+\((['\"])(.*?)\1\)", text)
    if found:
        return found.group(2).strip()
    found = re.search(r"\[Errno \d+\][^'\")]*", text)
    return found.group(0).strip() if found else one_line(text, 160)


def iso(t: datetime) -> str:
    """Tag value of a time: ISO 8601 in UTC, seconds."""
    return t.astimezone(UTC).isoformat(timespec="seconds")


def one_line(text: str, limit: int = 500) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters (for ``mdgate.reason``)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def quote(value: str) -> str:
    """Quote a string for an MLflow search filter."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_info(mv: ModelVersion) -> VersionInfo:
    """An MLflow ``ModelVersion`` as a :class:`VersionInfo`."""
    tags = dict(mv.tags or {})
    try:
        status = Status(tags[T.STATUS]) if tags.get(T.STATUS) else None
    except ValueError:
        status = None  # an unknown value is treated as never gated
    try:
        claim = int(tags.get(T.CLAIM, "0") or 0)
    except ValueError:
        claim = 0
    created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None
    return VersionInfo(
        name=mv.name, version=str(mv.version), status=status, reason=tags.get(T.REASON, ""),
        updated_at=parse_time(tags.get(T.UPDATED_AT)),
        lease_expires_at=parse_time(tags.get(T.LEASE_EXPIRES_AT)),
        claim=claim, criteria_sha256=tags.get(T.CRITERIA_SHA256), validation_run=tags.get(T.VALIDATION_RUN),
        report=tags.get(T.REPORT), flow_run=tags.get(T.FLOW_RUN) or None, source=mv.source or "",
        run_id=mv.run_id or None, created_at=created, description=mv.description or "",
        aliases=list(mv.aliases or []), tags=tags,
    )


class Registry:
    """The MLflow model registry as mdgate uses it.

    Args:
        tracking_uri: the MLflow tracking server (``http://...``; webhooks only fire through one).
        experiment: experiment holding the validation runs.
    """

    def __init__(self, tracking_uri: str, experiment: str = "mdgate"):
        self.tracking_uri = tracking_uri.rstrip("/")
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ---------------------------------------------------------------- reads

    def get_version(self, name: str, version: str | int) -> VersionInfo:
        """One version.

        Raises:
            VersionNotFoundError: no such model or version.
        """
        with translate_errors(f"reading {name}/{version}"):
            return to_info(self.client.get_model_version(name, str(version)))

    def search_versions(self, filter_string: str = "") -> list[VersionInfo]:
        """All versions matching an MLflow filter (every page), newest version first."""
        out: list[VersionInfo] = []
        token = None
        with translate_errors("searching model versions"):
            while True:
                page = self.client.search_model_versions(filter_string or None, max_results=1000,
                                                         page_token=token)
                out += [to_info(mv) for mv in page]
                token = page.token
                if not token:
                    break
        return sorted(out, key=lambda v: (v.name, -_num(v.version)))

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of a registered model, newest first.

        Raises:
            VersionNotFoundError: the model is not registered.
        """
        with translate_errors(f"reading model {name}"):
            model = self.client.get_registered_model(name)
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = self.search_versions(f"name={quote(name)}")
        for v in versions:
            v.aliases = sorted(aliases.get(v.version, []))
        return versions

    def model_tags(self, name: str) -> dict[str, str]:
        """Tags of a registered model."""
        with translate_errors(f"reading model {name}"):
            return dict(self.client.get_registered_model(name).tags or {})

    def alias_version(self, name: str, alias: str = T.APPROVED_ALIAS) -> str | None:
        """The version an alias of ``name`` points at, or ``None``."""
        with translate_errors(f"reading model {name}"):
            aliases = self.client.get_registered_model(name).aliases or {}
        value = aliases.get(alias)
        return str(value) if value is not None else None

    def versions_to_gate(self, lease_s: float, now: datetime | None = None) -> list[VersionInfo]:
        """Versions a sweep should gate: no status (or Pending), or Running with an expired lease.

        MLflow cannot filter on a missing tag, so every version is listed and filtered here.
        """
        now = now or utcnow()
        return [v for v in self.search_versions() if v.due(now, lease_s)]

    # ---------------------------------------------------------------- lifecycle

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on a version, in the given order."""
        with translate_errors(f"tagging {name}/{version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)

    def claim(self, name: str, version: str, lease_s: float, flow_run: str | None = None,
              force: bool = False, queued: bool = False) -> ClaimOutcome:
        """Take the lease on a version (status → Running) for ``flow_run``, or say why not.

        A trigger that has just created a gate run claims the version for that run (``queued``),
        so the version is Running within seconds of its registration; the run then adopts the
        claim (same ``flow_run``) when it starts, and renews the lease.

        Refused when the version already has a verdict (unless ``force``) or is Running with a
        live lease held by another flow run (even with ``force``), or when another gate claimed
        it first.
        """
        info = self.get_version(name, version)
        now = utcnow()
        expires = now + timedelta(seconds=lease_s)
        running = info.status == Status.RUNNING
        if running and flow_run and info.flow_run != flow_run and not info.lease_expired(now, lease_s):
            time.sleep(0.5)  # a trigger may be writing its claim for this very run: look once more
            info = self.get_version(name, version)
            running = info.status == Status.RUNNING
        if running and flow_run and info.flow_run == flow_run and info.claim > 0:
            self.set_tags(name, version, {T.LEASE_EXPIRES_AT: iso(expires), T.UPDATED_AT: iso(now),
                                          T.REASON: f"gate running (flow run {flow_run})"})
            return ClaimOutcome(claim=Claim(name=name, version=str(version), generation=info.claim,
                                            flow_run=flow_run, lease_s=lease_s, expires_at=expires),
                                status=Status.RUNNING)
        if running and not info.lease_expired(now, lease_s):
            until = iso(info.lease_expires_at) if info.lease_expires_at else "?"
            return ClaimOutcome(status=info.status, reason=f"already Running (flow run {info.flow_run}, "
                                                           f"lease until {until})")
        if info.status is not None and info.status.is_final and not force:
            return ClaimOutcome(status=info.status, reason=f"already {info.status.value}")
        generation = info.claim + 1
        while not self._take_lock(name, version, generation):
            if not self._lock_abandoned(name, version, generation, lease_s):
                return ClaimOutcome(status=info.status, reason=f"claim {generation} taken by another gate")
            generation += 1  # its gate died before writing it to the version: take the next one
        what = "gate queued" if queued else "gate running"
        # In this order (module docstring): a reader never sees the new claim number without a
        # live Running lease, nor its own flow run without the new claim number.
        self.set_tags(name, version, {
            T.LEASE_EXPIRES_AT: iso(expires), T.REASON: what + (f" (flow run {flow_run})" if flow_run else ""),
            T.UPDATED_AT: iso(now), T.STATUS: Status.RUNNING.value, T.CLAIM: str(generation),
            T.FLOW_RUN: flow_run or "",
        })
        return ClaimOutcome(claim=Claim(name=name, version=str(version), generation=generation,
                                        flow_run=flow_run, lease_s=lease_s, expires_at=expires),
                            status=Status.RUNNING)

    def _lock_abandoned(self, name: str, version: str, generation: int, lease_s: float) -> bool:
        """Was claim ``generation``, which the version does not show, taken more than a lease
        ago? Then its gate died between taking it and writing it, and the next claim is free to
        take (a live gate writes its claim within moments of taking it).
        """
        lock = CLAIM_EXPERIMENT.format(name=name, version=version, generation=generation)
        with translate_errors(f"reading claim {generation} of {name}/{version}"):
            experiment = self.client.get_experiment_by_name(lock)  # deleted ones too
        if experiment is None or not experiment.creation_time:
            return False
        return time.time() - experiment.creation_time / 1000 > lease_s

    def _take_lock(self, name: str, version: str, generation: int) -> bool:
        lock = CLAIM_EXPERIMENT.format(name=name, version=version, generation=generation)
        try:
            with translate_errors(f"claiming {name}/{version}"):
                experiment_id = self.client.create_experiment(lock, tags={"mdgate.lock": "true"})
        except PermanentRegistryError as e:
            cause = e.__cause__
            if isinstance(cause, MlflowException) and cause.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        with contextlib.suppress(RegistryError), translate_errors("hiding the claim"):
            self.client.delete_experiment(experiment_id)
        return True

    def check_claim(self, claim: Claim) -> VersionInfo:
        """The version, if ``claim`` still holds it.

        Raises:
            LeaseLostError: another gate claimed the version since.
        """
        info = self.get_version(claim.name, claim.version)
        if info.claim != claim.generation or info.status != Status.RUNNING:
            raise LeaseLostError(
                f"{claim.name}/{claim.version}: claim {claim.generation} lost (now claim {info.claim}, "
                f"status {info.status.value if info.status else 'none'})"
            )
        return info

    def renew(self, claim: Claim) -> Claim:
        """Extend the lease of a claim that still holds its version.

        Raises:
            LeaseLostError: another gate claimed the version since.
        """
        self.check_claim(claim)
        expires = utcnow() + timedelta(seconds=claim.lease_s)
        self.set_tags(claim.name, claim.version, {T.LEASE_EXPIRES_AT: iso(expires)})
        return claim.model_copy(update={"expires_at": expires})

    # ---------------------------------------------------------------- webhooks

    def ensure_webhook(self, name: str, url: str, secret: str,
                       events: tuple[str, ...] = ("model_version.created",)) -> str:
        """Create or update the webhook called ``name`` (active, pointing at ``url``); return its id.

        Webhooks fire only through a tracking server with a SQL store.
        """
        with translate_errors(f"configuring webhook {name}"):
            token = None
            while True:
                page = self.client.list_webhooks(max_results=100, page_token=token)
                for hook in page:
                    if hook.name == name:
                        self.client.update_webhook(hook.webhook_id, url=url, events=list(events),
                                                   secret=secret, status="ACTIVE")
                        return hook.webhook_id
                token = page.token
                if not token:
                    break
            return self.client.create_webhook(name, url, events=list(events), secret=secret,
                                              description="mdgate: gate new model versions").webhook_id

    def set_webhook_active(self, webhook_id: str, active: bool) -> None:
        """Enable or disable a webhook."""
        with translate_errors(f"updating webhook {webhook_id}"):
            self.client.update_webhook(webhook_id, status="ACTIVE" if active else "DISABLED")

    # ---------------------------------------------------------------- publishing

    def publish(self, claim: Claim, result: ValidationResult, report_dir: Path, criteria_sha256: str,
                extra_tags: dict[str, str] | None = None) -> Publication:
        """Store a verdict: validation run (params, metrics, artifacts), description, tags,
        status, alias. The status is written last, after everything else is stored.

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
        status = Status(result.verdict.value)
        with translate_errors(f"describing {claim.name}/{claim.version}"):
            self.client.update_model_version(
                claim.name, claim.version,
                description=description_markdown(info.description, result, run_url, report_uri),
            )
        tags = {
            T.REASON: one_line(result.reason), T.REPORT: report_uri, T.VALIDATION_RUN: run_id,
            T.FLOW_RUN: claim.flow_run or "", T.CRITERIA_SHA256: criteria_sha256,
            **(extra_tags or {}), T.UPDATED_AT: iso(utcnow()),
        }
        self.set_figure_tags(info, result)
        self.set_tags(claim.name, claim.version, tags)
        # The status last; the lease stays until then, so a gate that dies before this line
        # leaves the version Running with its lease, which runs out: the sweep gates it again.
        self.set_tags(claim.name, claim.version, {T.STATUS: status.value})
        self._release(claim)
        alias = self.update_alias(claim.name)
        return Publication(run_id=run_id, run_url=run_url, report_uri=report_uri, status=status,
                           alias_version=alias)

    def publish_error(self, claim: Claim, result: ValidationResult, criteria_sha256: str,
                      extra_tags: dict[str, str] | None = None) -> Publication:
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
            T.REASON: one_line(result.reason), T.FLOW_RUN: claim.flow_run or "",
            T.CRITERIA_SHA256: criteria_sha256, **(extra_tags or {}), T.UPDATED_AT: iso(utcnow()),
        })
        self.set_tags(claim.name, claim.version, {T.STATUS: Status.ERROR.value})
        self._release(claim)
        alias = self.update_alias(claim.name)
        return Publication(run_id="", run_url="", report_uri="", status=Status.ERROR, alias_version=alias)

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
        experiment_id = self._experiment_id()
        with translate_errors("logging the validation run"):
            run = self.client.create_run(
                experiment_id, run_name=f"gate/{claim.name}/v{claim.version}",
                tags={"mdgate.model": claim.name, "mdgate.version": claim.version,
                      "mdgate.verdict": result.verdict.value, "mdgate.claim": str(claim.generation),
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

    def _experiment_id(self) -> str:
        with translate_errors(f"reading experiment {self.experiment}"):
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is not None and exp.lifecycle_stage == "active":
                return exp.experiment_id
            if exp is not None:
                self.client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            try:
                return self.client.create_experiment(self.experiment)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                return self.client.get_experiment_by_name(self.experiment).experiment_id  # type: ignore[union-attr]

    def update_alias(self, name: str) -> str | None:
        """Point the ``approved`` alias at the newest Approved version (remove it if none)."""
        approved = self.search_versions(f"name={quote(name)} AND tags.`{T.STATUS}` = 'Approved'")
        newest = max((v.version for v in approved), key=_num, default=None)
        with translate_errors(f"setting alias {T.APPROVED_ALIAS} of {name}"):
            if newest is not None:
                self.client.set_registered_model_alias(name, T.APPROVED_ALIAS, newest)
            elif self.alias_version(name) is not None:
                self.client.delete_registered_model_alias(name, T.APPROVED_ALIAS)
        return newest


def _num(version: str) -> int:
    try:
        return int(version)
    except ValueError:
        return -1


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
