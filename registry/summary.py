"""Short summaries of a verdict: the version description (Markdown) and per-molecule rows."""

from __future__ import annotations

import math
from typing import Any

from mdgate.checks.table import tagged_checks
from mdgate.report.tables import fmt, markdown_table, molecule_rows
from mdgate.results import ValidationResult, iter_checks
from registry import types as T
from registry.types import DESCRIPTION_MARKER


def summary_rows(result: ValidationResult) -> list[dict[str, Any]]:
    """One row per molecule: every stage that ran (PASS, or FAIL with the failing checks), the
    table's summary figures and the molecule's result (the report's per-molecule table).
    """
    return molecule_rows(result)


def summary_markdown(result: ValidationResult) -> str:
    """Verdict, reason and the per-molecule table, as Markdown."""
    lines = [f"**mdgate verdict: {result.verdict.value}**. {result.reason}", ""]
    table = markdown_table(summary_rows(result))
    if table:
        lines += [*table, ""]
    if result.failures:
        lines.append(f"{len(result.failures)} required check(s) failed:")
        lines += [f"- {f.line()}" for f in result.failures[:MAX_FAILURE_LINES]]
        if len(result.failures) > MAX_FAILURE_LINES:
            lines.append(f"- … and {len(result.failures) - MAX_FAILURE_LINES} more (see the report)")
        lines.append("")
    acc = result.accuracy
    if acc is not None:
        lines.append(f"Accuracy on {acc.n_frames} reference frames: force R² {fmt(acc.force_r2)}, force MAE "
                     f"{fmt(acc.force_mae_eV_per_A)} eV/Å{'' if acc.applicable else ' (not applicable)'}.")
        lines.append("")
    return "\n".join(lines)


#: Failed checks listed in the version description (the report lists all).
MAX_FAILURE_LINES = 12


def description_markdown(previous: str, result: ValidationResult, run_url: str, report_uri: str) -> str:
    """The version description: the author's text (kept), then mdgate's verdict section."""
    own = previous.split(DESCRIPTION_MARKER)[0].rstrip()
    sha = str(result.criteria.get("sha256", ""))[:12]
    section = "\n".join([
        DESCRIPTION_MARKER,
        "### MD gate",
        "",
        summary_markdown(result),
        f"[Validation run]({run_url}) · report `{report_uri}` · criteria `{sha}` · {result.created_at}",
    ])
    return f"{own}\n\n{section}" if own else section


def decimal(value: float | None, places: int = 4) -> str | None:
    """``value`` as a plain decimal string with ``places`` decimals (``0.9731``, ``12.5000``,
    ``-3.2100``; never an exponent), or ``None`` when it is missing or not finite.
    """
    if value is None or not math.isfinite(value):
        return None
    text = f"{value:.{places}f}"
    return "0." + "0" * places if text == "-0." + "0" * places else text


def min_time_to_failure_ps(result: ValidationResult) -> float | None:
    """The shortest time to failure over the stress stage's replicas; the stage's full length
    (steps × time step) when no replica failed; ``None`` when the stage did not run.
    """
    stage = result.stages.get("stress")
    if stage is None or not stage.ran or not stage.molecules:
        return None
    failed = [t for m in stage.molecules for r in m.replicas if (t := r.metrics.get("time_to_failure_ps")) is not None]
    if failed:
        return min(failed)
    dt_fs = stage.settings.get("timestep_fs")
    if dt_fs is None:
        return None
    return max(m.steps_asked for m in stage.molecules) * float(dt_fs) * 1e-3


def verdict_tags(result: ValidationResult) -> dict[str, str | None]:
    """The version tags a consumer filters on, from one verdict: ``None`` means remove the tag.

    ``mdgate.force_r2`` (reference set, when the accuracy check applies),
    ``mdgate.oracle_force_r2`` (on-trajectory oracle, all molecules), one ``mdgate.<tag>`` per
    check the table tags (its worst value over the molecules, e.g.
    ``mdgate.worst_drift_meV_per_atom_per_ps``), ``mdgate.min_time_to_failure_ps`` (see
    :func:`min_time_to_failure_ps`), ``mdgate.decided_by`` (``stage/check`` of a rejection), and
    ``mdgate.n_parameters`` / ``mdgate.parent`` when the gate knows them (else the registration's
    tags stay as they are).
    """
    acc = result.accuracy
    oracle = result.stages.get("oracle")
    oracle_r2 = None
    if oracle is not None and oracle.ran:
        oracle_r2 = (oracle.per_molecule.get("all") or {}).get("force_r2")
    tags: dict[str, str | None] = {
        T.FORCE_R2: decimal(acc.force_r2) if acc is not None and acc.applicable else None,
        T.ORACLE_FORCE_R2: decimal(oracle_r2),
        T.MIN_TIME_TO_FAILURE: decimal(min_time_to_failure_ps(result)),
        T.DECIDED_BY: result.decided_by or None,
    }
    for spec in tagged_checks():
        values = [pc.check.value for pc in iter_checks(result) if pc.check.name == spec.name
                  and pc.molecule is not None and pc.check.value is not None]
        worst = (min(values) if spec.lower else max(values)) if values else None
        tags[f"mdgate.{spec.tag}"] = decimal(worst)
    if result.model.n_parameters is not None:
        tags[T.N_PARAMETERS] = str(result.model.n_parameters)
    if result.model.parent:
        tags[T.PARENT] = result.model.parent
    return tags
