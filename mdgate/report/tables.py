"""The verdict's tables, built from the check table and :func:`mdgate.results.iter_checks`: one
row per check of every stage that ran, and one row per molecule with every stage. The report and
the registry's version description both use them, so both say what the verdict says.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mdgate.checks.table import CHECKS, STAGE_TITLE, Stage, summary_columns
from mdgate.results import CheckResult, ValidationResult, fmt, iter_checks

#: Short stage names for table headers.
STAGE_SHORT = {"sanity": "sanity", "pes": "PES", "nve": "NVE", "accuracy": "accuracy", "stress": "stress",
               "oracle": "oracle"}


def status(c: CheckResult) -> str:
    """PASS, FAIL, ``(info)`` for a check that does not decide, ``n/a`` when not measurable."""
    if c.passed is None:
        return "n/a" if c.bound is not None or "not applicable" in c.note else "info"
    label = "PASS" if c.passed else "FAIL"
    return label if c.required else f"{label} (info)"


def label(name: str) -> str:
    """The table's label of check ``name`` (the name itself for a check outside the table)."""
    return CHECKS[name].label if name in CHECKS else name


def cell(value: Any) -> str:
    """A Markdown table cell: numbers formatted, ``|`` escaped (``max |E-E0|`` would split the cell)."""
    return (fmt(value) if isinstance(value, float) else str(value)).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """GFM pipe-table lines for ``rows`` (the first row's keys are the header); empty for no rows."""
    if not rows:
        return []
    header = list(rows[0])
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in header) + " |" for row in rows]
    return lines


def check_rows(result: ValidationResult) -> list[dict[str, Any]]:
    """One row per (stage, check) that ran: the worst value over molecules and replicas, the bound,
    how many trajectories (MD stages) or molecules passed it, and its status. Protocol order.
    """
    md = {(st, m.name): m for st, s in result.stages.items() for m in s.molecules}
    md.update({("nve", m.name): m for m in result.molecules})
    per: dict[tuple[str, str], list[CheckResult]] = defaultdict(list)
    counted: dict[tuple[str, str], list[bool | None]] = defaultdict(list)
    for pc in iter_checks(result):
        key = (pc.stage, pc.check.name)
        per[key].append(pc.check)
        mol = md.get((pc.stage, pc.molecule or ""))
        counted[key] += [c.passed for r in mol.replicas for c in r.checks if c.name == pc.check.name] if mol \
            else [pc.check.passed]
    rows = []
    for (stage, name), checks in per.items():
        failed = [c for c in checks if c.passed is False]
        values = [c.value for c in checks if c.value is not None]
        first = failed[0] if failed else checks[0]
        worst = (min(values) if first.comparison == ">=" else max(values)) if values else None
        bound = f"{first.comparison} {fmt(first.bound)} {first.unit}".rstrip() if first.bound is not None else "-"
        states = counted[(stage, name)]
        rows.append({"Stage": STAGE_SHORT.get(stage, stage), "Check": label(name), "Worst value": worst,
                     "Bound": bound, "Passed": f"{sum(s is True for s in states)}/{len(states)}",
                     "Status": status(first)})
    return rows


def _stage_cell(checks: list[CheckResult]) -> str:
    """A molecule's result in one stage: PASS, or FAIL with the failing required checks."""
    # The detector that stopped a trajectory first, the completion it cut short last.
    failed = sorted((c for c in checks if c.required and c.passed is False), key=lambda c: c.name == "completion")
    if not failed:
        return "PASS" if any(c.passed for c in checks) else "-"
    at = next((c.time_ps for c in failed if c.time_ps is not None), None)
    when = f" at {fmt(at)} ps" if at is not None else ""
    return "FAIL: " + ", ".join(dict.fromkeys(c.name for c in failed)) + when


def molecule_rows(result: ValidationResult) -> list[dict[str, Any]]:
    """One row per molecule: formula, atoms, NVE steps, each stage that ran (PASS or FAIL with
    the failing checks and the time of failure), the summary columns of the table (NVE figures,
    force R² on the reference set) and the molecule's result.
    """
    mols: dict[str, dict[str, list[CheckResult]]] = defaultdict(lambda: defaultdict(list))
    for pc in iter_checks(result):
        if pc.molecule is not None:
            mols[pc.molecule][pc.stage].append(pc.check)
    info = {m.name: m for st in result.stages.values() for m in st.molecules}
    info.update({m.name: m for m in result.molecules})
    stages = [s.value for s in Stage if s in result.stages and result.stages[s].ran and s != Stage.ACCURACY]
    rows = []
    for name, by_stage in mols.items():
        mol = info.get(name)
        row: dict[str, Any] = {"Molecule": name, "Formula": mol.formula if mol else "",
                               "Atoms": mol.n_atoms if mol else ""}
        nve_mol = next((m for m in result.molecules if m.name == name), None)
        if nve_mol is not None:
            row["NVE steps"] = f"{min((r.steps_done for r in nve_mol.replicas), default=0)}/{nve_mol.steps_asked}"
        for stage in stages:
            row[STAGE_SHORT[stage]] = _stage_cell(by_stage.get(stage, [])) if stage != "oracle" else \
                _oracle_cell(result, name)
        nve = {c.name: c.value for c in by_stage.get("nve", [])}
        for column, check in summary_columns():
            value = nve.get(check)
            if check == "min_force_r2" and result.accuracy is not None:
                value = (result.accuracy.per_molecule.get(name) or {}).get("force_r2")
            row[column] = None if value is None else float(f"{value:.4g}")
        failed = any(c.required and c.passed is False for checks in by_stage.values() for c in checks)
        row["Result"] = "FAIL" if failed else "PASS"
        rows.append(row)
    return rows


def _oracle_cell(result: ValidationResult, molecule: str) -> str:
    """The oracle's force R² on a molecule's own frames (the stage is judged over all molecules)."""
    oracle = result.stages.get(Stage.ORACLE)
    r2 = ((oracle.per_molecule.get(molecule) or {}).get("force_r2")) if oracle is not None else None
    return f"R² {fmt(r2)}" if r2 is not None else "-"


def stage_title(stage: str) -> str:
    """The report title of a stage."""
    try:
        return STAGE_TITLE[Stage(stage)]
    except ValueError:
        return stage


def check_table(checks: list[CheckResult], add, value_title: str = "Value (worst)") -> None:
    """A stage's checks as a Markdown table (label and name, value, bound, status, note) through ``add``."""
    add(f"| Check | {value_title} | Bound | Status | Note |")
    add("|---|---|---|---|---|")
    for c in checks:
        bound = f"{c.comparison} {fmt(c.bound)}" if c.bound is not None else "-"
        add(f"| {label(c.name)} (`{c.name}`) | {fmt(c.value)} {c.unit} | {bound} | {status(c)} | {c.note or '-'} |")
    add("")
