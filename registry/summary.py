"""Short summaries of a verdict: the version description (Markdown) and per-molecule rows."""

from __future__ import annotations

from typing import Any

from mdgate.report import fmt
from mdgate.results import ValidationResult
from registry.types import DESCRIPTION_MARKER

#: (column, summary key) of the per-molecule table.
COLUMNS = [
    ("drift slope (meV/atom/ps)", "drift_slope_meV_per_atom_per_ps"),
    ("max |E-E0| (meV/atom)", "max_energy_deviation_meV_per_atom"),
    ("max bond dev (Å)", "max_bond_deviation_A"),
    ("max T (K)", "max_temperature_K"),
    ("max force (eV/Å)", "max_force_eV_per_A"),
]


def summary_rows(result: ValidationResult) -> list[dict[str, Any]]:
    """One row per molecule: steps, the main MD figures (worst replica) and pass/fail."""
    rows = []
    for mol in result.molecules:
        checks = {c.name: c.value for c in mol.checks}
        row: dict[str, Any] = {
            "molecule": mol.name, "formula": mol.formula, "atoms": mol.n_atoms,
            "steps": f"{min((r.steps_done for r in mol.replicas), default=0)}/{mol.steps_asked}",
        }
        for label, key in COLUMNS:
            value = checks.get(key, mol.summary.get(key))
            row[label] = None if value is None else float(f"{value:.4g}")
        if result.accuracy is not None and mol.name in result.accuracy.per_molecule:
            row["force R²"] = float(f"{result.accuracy.per_molecule[mol.name]['force_r2']:.4g}")
        row["result"] = "PASS" if mol.passed else "FAIL"
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    """A Markdown table cell: a ``|`` in the text (``max |E-E0|``) would split the cell."""
    return (fmt(value) if isinstance(value, float) else str(value)).replace("|", "\\|")


def summary_markdown(result: ValidationResult) -> str:
    """Verdict, reason and the per-molecule table, as Markdown."""
    lines = [f"**mdgate verdict: {result.verdict.value}**. {result.reason}", ""]
    rows = summary_rows(result)
    if rows:
        header = list(rows[0])
        lines.append("| " + " | ".join(map(_cell, header)) + " |")
        lines.append("|" + "---|" * len(header))
        for row in rows:
            lines.append("| " + " | ".join(map(_cell, row.values())) + " |")
        lines.append("")
    acc = result.accuracy
    if acc is not None:
        lines.append(f"Accuracy on {acc.n_frames} reference frames: force R² {fmt(acc.force_r2)}, force MAE "
                     f"{fmt(acc.force_mae_eV_per_A)} eV/Å{'' if acc.applicable else ' (not applicable)'}.")
        lines.append("")
    return "\n".join(lines)


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
