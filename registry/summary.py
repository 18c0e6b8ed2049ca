"""Short summaries of a verdict: the version description (Markdown) and per-molecule rows."""

from __future__ import annotations

from typing import Any

from mdgate.report.tables import fmt, markdown_table, molecule_rows
from mdgate.results import ValidationResult
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

