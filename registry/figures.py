"""The verdict's searchable figures: metrics of one MLflow logged model per gated version.

Version tags hold what a person reads in the versions list (status, reason, the deciding check,
criteria, report). The figures people filter on by value (force R², worst drift, time to
failure, parameter count) are metrics of a *logged model* in the validation experiment, one per
gated version, which MLflow 3's ``search_logged_models`` compares numerically
(``metrics.force_r2 >= 0.99``); what the model is (parent, level of theory, units) are its
params, and which version it judged its tags. The same metrics are logged on the validation run,
so the run's page shows them beside the report. A re-gate replaces the version's logged model:
nothing stale is left to find.
"""

from __future__ import annotations

import contextlib
import math
import time

from mlflow.entities import LoggedModel, Metric
from mlflow.exceptions import MlflowException

from mdgate.checks.table import figure_checks
from mdgate.results import ValidationResult, iter_checks
from registry import types as T
from registry.connection import Connection, experiment_id, translate_errors
from registry.summary import min_time_to_failure_ps
from registry.text import quote
from registry.types import Claim, VersionInfo
from registry.versions import delete_tags, list_versions

#: Metric names (no prefix: they live on mdgate's own logged models).
FORCE_R2 = "force_r2"
ORACLE_FORCE_R2 = "oracle_force_r2"
MIN_TIME_TO_FAILURE = "min_time_to_failure_ps"
N_PARAMETERS = "n_parameters"
COMPRESSION_RATIO = "compression_ratio"
WORST_DRIFT = "worst_drift_meV_per_atom_per_ps"

#: The logged model's tags: which version it judged, and the gate's verdict on it.
MODEL = "mdgate.model"
VERSION = "mdgate.version"
VERDICT = "mdgate.verdict"

#: Version tags of earlier gates that held figures; removed when a version is gated again.
LEGACY_TAGS = ("mdgate.force_r2", "mdgate.oracle_force_r2", "mdgate.min_time_to_failure_ps",
               "mdgate.worst_drift_meV_per_atom_per_ps", "mdgate.validation_run", "mdgate.decision")


def verdict_figures(result: ValidationResult) -> dict[str, float]:
    """The figures of one verdict, finite ones only: ``force_r2`` (reference set, when the
    accuracy check applies), ``oracle_force_r2`` (on-trajectory oracle, all molecules), one per
    check the table marks as a figure (its worst value over the molecules, e.g.
    ``worst_drift_meV_per_atom_per_ps``), ``min_time_to_failure_ps`` (see
    :func:`registry.summary.min_time_to_failure_ps`), ``n_parameters`` and ``compression_ratio``.
    """
    acc = result.accuracy
    oracle = result.stages.get("oracle")
    oracle_r2 = None
    if oracle is not None and oracle.ran:
        oracle_r2 = (oracle.per_molecule.get("all") or {}).get("force_r2")
    figures: dict[str, float | None] = {
        FORCE_R2: acc.force_r2 if acc is not None and acc.applicable else None,
        ORACLE_FORCE_R2: oracle_r2,
        MIN_TIME_TO_FAILURE: min_time_to_failure_ps(result),
        N_PARAMETERS: result.model.n_parameters,
        COMPRESSION_RATIO: result.model.compression_ratio,
    }
    for spec in figure_checks():
        assert spec.figure is not None
        values = [pc.check.value for pc in iter_checks(result) if pc.check.name == spec.name
                  and pc.molecule is not None and pc.check.value is not None]
        figures[spec.figure] = (min(values) if spec.lower else max(values)) if values else None
    return {k: float(v) for k, v in figures.items() if v is not None and math.isfinite(v)}


def verdict_params(result: ValidationResult) -> dict[str, str]:
    """What the judged model is, as the logged model's params (absent facts left out)."""
    m = result.model
    params = {"parent": m.parent, "level_of_theory": m.level_of_theory, "energy_unit": m.energy_unit,
              "position_unit": m.position_unit, "cutoff_A": None if m.cutoff_A is None else f"{m.cutoff_A:g}",
              "model_ran": m.runs_in}
    return {k: str(v)[:6000] for k, v in params.items() if v}


def log_figures(conn: Connection, claim: Claim, result: ValidationResult, run_id: str,
                criteria_sha256: str) -> str:
    """Log the verdict's figures as a logged model of the validation run ``run_id`` (and as the
    run's metrics), then remove the version's earlier ones; returns the logged model's id.
    """
    exp_id = experiment_id(conn)
    tags = {MODEL: claim.name, VERSION: claim.version, VERDICT: result.verdict.value,
            T.CRITERIA_SHA256: criteria_sha256}
    if result.decided_by:
        tags[T.DECIDED_BY] = result.decided_by
    with translate_errors(f"logging the figures of {claim.name}/{claim.version}"):
        model = conn.mlflow.create_logged_model(exp_id, name=f"{claim.name}-v{claim.version}", source_run_id=run_id,
                                                tags=tags, params=verdict_params(result))
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, 0, model_id=model.model_id) for k, v in verdict_figures(result).items()]
        if metrics:
            conn.mlflow.log_batch(run_id, metrics=metrics)
        conn.mlflow.finalize_logged_model(model.model_id, "READY")
    drop_figures(conn, claim.name, claim.version, keep=model.model_id)
    return model.model_id


def drop_figures(conn: Connection, name: str, version: str, keep: str | None = None) -> None:
    """Delete the logged models holding figures of ``name/version`` (but ``keep``)."""
    for model in search_figures(conn, f"tags.`{MODEL}` = {quote(name)} AND tags.`{VERSION}` = {quote(version)}"):
        if model.model_id != keep:
            with translate_errors(f"removing earlier figures of {name}/{version}"), \
                    contextlib.suppress(MlflowException):  # removed meanwhile
                conn.mlflow.delete_logged_model(model.model_id)


def drop_legacy_tags(conn: Connection, info: VersionInfo, also: tuple[str, ...] = ()) -> None:
    """Remove the figure tags an earlier gate wrote on the version (see :data:`LEGACY_TAGS`), and
    the tags ``also`` named that the version has.
    """
    delete_tags(conn, info, [*LEGACY_TAGS, *also, *(f"mdgate.{s.figure}" for s in figure_checks())])


def search_figures(conn: Connection, filter_string: str = "") -> list[LoggedModel]:
    """The logged models of verdicts matching a ``search_logged_models`` filter (every page),
    e.g. ``metrics.force_r2 >= 0.99 AND tags.`mdgate.model` = 'painn-student'``.
    """
    exp_id = experiment_id(conn)
    out: list[LoggedModel] = []
    token = None
    with translate_errors("searching the verdicts' figures"):
        while True:
            page = conn.mlflow.search_logged_models([exp_id], filter_string=filter_string or None,
                                                    max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out


def figures_of(model: LoggedModel) -> dict[str, float]:
    """A logged model's figures by name (the latest value of each)."""
    latest: dict[str, Metric] = {}
    for m in model.metrics or []:
        if m.key not in latest or (m.timestamp, m.step) >= (latest[m.key].timestamp, latest[m.key].step):
            latest[m.key] = m
    return {k: m.value for k, m in latest.items()}


def figures_by_version(conn: Connection, name: str, filter_string: str = "") -> dict[str, dict[str, float]]:
    """The figures of each gated version of ``name`` whose figures match ``filter_string`` (a
    ``search_logged_models`` filter; empty: all), by version.
    """
    query = f"tags.`{MODEL}` = {quote(name)}" + (f" AND {filter_string}" if filter_string.strip() else "")
    return {m.tags.get(VERSION, ""): figures_of(m) for m in search_figures(conn, query)}


def versions_where(conn: Connection, name: str, filter_string: str) -> list[VersionInfo]:
    """The versions of ``name`` whose verdict's figures match ``filter_string``, newest first,
    with their current status (e.g. ``metrics.force_r2 >= 0.99``).
    """
    matching = figures_by_version(conn, name, filter_string)
    return [v for v in list_versions(conn, name) if v.version in matching]
