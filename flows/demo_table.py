"""The demo's study table (``mdgate demo``): one row per gated version, every figure read from
its ``results.json``, printed in :data:`WIDTH` columns (:func:`render_study`).
"""

from __future__ import annotations

import contextlib
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from registry.types import VersionInfo

#: Width the study's table and the progress lines fit in.
WIDTH = 100


@dataclass
class Row:
    """One line of the study's table."""

    stem: str
    version: VersionInfo
    results: dict | None = None
    report: Path | None = None


def _shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it lies under it (short enough for a table)."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _failure_time_ps(replica: dict) -> float | None:
    """When a stress trajectory failed (``None``: it ran to the end)."""
    t = (replica.get("metrics") or {}).get("time_to_failure_ps")
    return t if t is not None else (replica.get("failure") or {}).get("time_ps")


def study_row(row: Row) -> dict[str, str]:
    """One version's figures, all read from its ``results.json`` (``row.results``).

    Keys: ``version``, ``model``, ``parameters``, ``verdict``, ``deciding check`` (``stage/check``
    of a rejection), ``stress`` (trajectories that survived the heat stress, confirmation replicas
    included, and the shortest time to failure; ``n/a`` when it did not run), ``force R²`` (reference set / oracle on
    the model's own trajectories), ``NVE drift`` (largest |drift slope|, meV/atom/ps), ``why``
    (the deciding failure in one line, or the reason of an Error) and ``report``.
    """
    r = row.results or {}
    model = r.get("model") or {}
    stages = r.get("stages") or {}
    stress = stages.get("stress") or {}
    if stress.get("ran") and stress.get("molecules"):
        reps = [rep for m in stress["molecules"] for rep in m.get("replicas", [])]
        times = [t for rep in reps if (t := _failure_time_ps(rep)) is not None]
        survived = f"{len(reps) - len(times)}/{len(reps)}"
        ttf = f"{survived}, {min(times):.2f}" if times else survived
    else:
        ttf = "n/a"
    acc = r.get("accuracy") or {}
    ref_r2 = acc.get("force_r2") if acc.get("applicable", True) else None
    oracle = stages.get("oracle") or {}
    traj_r2 = ((oracle.get("per_molecule") or {}).get("all") or {}).get("force_r2") if oracle.get("ran") else None
    drifts = [abs(c["value"]) for m in r.get("molecules", []) for c in m.get("checks", [])
              if c.get("name") == "drift_slope_meV_per_atom_per_ps" and c.get("value") is not None]
    status = row.version.status.value if row.version.status else (r.get("verdict") or "-")
    failed = r.get("failed_checks") or []
    why = "" if status == "Approved" else (failed[0] if failed else r.get("reason", ""))
    return {
        "version": f"v{row.version.version}",
        "model": row.stem,
        "parameters": f"{model['n_parameters']:,}" if model.get("n_parameters") else "n/a",
        "verdict": status,
        "deciding check": r.get("decided_by") or ("" if status == "Approved" else "-"),
        "stress": ttf,
        "force R²": f"{_fmt(ref_r2, '.3f')}/{_fmt(traj_r2, '.3f')}",
        "NVE drift": f"{max(drifts):.3f}" if drifts else "n/a",
        "why": why,
        "report": _shown_path(row.report) if row.report else (row.version.report or "-"),
    }


def study_table(rows: list[Row]) -> list[dict[str, str]]:
    """The study's table: one :func:`study_row` per version."""
    return [study_row(row) for row in rows]


#: (header line 1, header line 2, key) of the printed table; the last column takes what is left.
_COLUMNS = (("version", "", "version"), ("params", "", "parameters"), ("verdict", "", "verdict"),
            ("stress", "ok, ps", "stress"), ("force R²", "ref/traj", "force R²"), ("NVE", "drift", "NVE drift"),
            ("deciding check", "stage/check", "deciding check"))
#: Unit suffixes of check names, left out in the table (the line under it has the value and unit).
_UNIT_SUFFIX = re.compile(r"_(meV|eV|K|A|percent|relative)(_per_[A-Za-z]+)*$")


def short_check(decided_by: str) -> str:
    """``sanity/fd_force_error_relative`` → ``sanity/fd_force_error`` (the unit suffix left out)."""
    stage, _, check = decided_by.rpartition("/")
    return f"{stage}/{_UNIT_SUFFIX.sub('', check)}" if stage else _UNIT_SUFFIX.sub("", check)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def render_study(table: list[dict[str, str]], width: int = WIDTH) -> str:
    """The study as plain text in ``width`` columns: the table, a legend, and the deciding
    failure of each version not approved, in one line each (the reports have the rest).
    """
    cells = [[f"{row['version']} {row['model']}", *(row[key] for _, _, key in _COLUMNS[1:-1]),
              short_check(row["deciding check"])] for row in table]
    heads = [(h1, h2) for h1, h2, _ in _COLUMNS]
    widths = [max([len(h1), len(h2)] + [len(c[k]) for c in cells]) for k, (h1, h2) in enumerate(heads)]
    gap = 2
    over = sum(widths) + gap * (len(widths) - 1) - width
    for k in (len(widths) - 1, 0):  # shrink the deciding check, then the version/model column
        cut = max(0, min(over, widths[k] - 12))
        widths[k] -= cut
        over -= cut
    right = {1, 3, 4, 5}

    def line(values: list[str]) -> str:
        out = [_cut(v, w).rjust(w) if k in right else _cut(v, w).ljust(w)
               for k, (v, w) in enumerate(zip(values, widths, strict=True))]
        return (" " * gap).join(out).rstrip()

    text = [line([h1 for h1, _ in heads]), line([h2 for _, h2 in heads]),
            "-" * min(width, sum(widths) + gap * (len(widths) - 1))]
    text += [line(c) for c in cells]
    text += _wrap("stress: trajectories that survived the heat ramp (confirmation replicas included), then the "
                  "first failure's time in ps; "
                  "force R²: reference set / oracle on the model's own MD frames; NVE drift: largest "
                  "|slope| of E(t), meV/atom/ps; n/a: not run", width)
    reasons = [row for row in table if row["why"]]
    if reasons:
        text.append("")
        for row in reasons:
            text += _wrap(f"{row['version']} {row['model']} {row['verdict']}: {row['why']}", width)
    return "\n".join(text)


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, subsequent_indent="    ") if len(text) > width else [text]
