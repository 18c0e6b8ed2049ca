"""The report's comparison with a baseline: candidate and baseline side by side (a table of the
compared figures, and each molecule's total-energy drift of both overlaid in one plot).

The comparison itself is made by the decision layer (:mod:`mdgate.checks.decision`); the flow
only fetches the baseline. This module only renders what it is given.
"""

from __future__ import annotations

from pathlib import Path

from mdgate.report.plots import PlotJob
from mdgate.report.tables import fmt
from mdgate.results import REMEASURED, STORED, BaselineComparison, MoleculeResult, ValidationResult


def _origin_text(section: BaselineComparison) -> str:
    if section.origin == STORED:
        return "its figures are the stored results of its own validation run, under the same criteria"
    if section.origin == REMEASURED:
        why = f" ({section.origin_note})" if section.origin_note else ""
        return ("its figures were re-measured by this gate on the same molecules and seeds, under the current "
                f"criteria{why}")
    return section.origin_note or "no figures of it were compared"


def champion_section(section: BaselineComparison, plots: dict[str, str], add) -> None:
    """The report section: the baseline named, its figures' origin, the side-by-side table and
    the overlaid energy plots.
    """
    add(f"## Comparison with the {section.role}")
    add("")
    if section.label is None:
        add(f"{section.note[:1].upper()}{section.note[1:]}: the verdict rests on the absolute bounds alone.")
        add("")
        return
    add(f"**Baseline**: {section.title}; {_origin_text(section)}.  ")
    add(f"**Outcome**: {section.note}")
    add("")
    if section.comparisons:
        label = section.label
        add(f"| Check | Place | Candidate | Baseline ({label}) | Allowed | Worse? |")
        add("|---|---|---|---|---|---|")
        for c in section.comparisons:
            unit = f" {c.unit}" if c.unit else ""
            add(f"| {c.check} | {c.where} | {fmt(c.candidate)}{unit} | {fmt(c.baseline)}{unit} "
                f"| {c.comparison} {fmt(c.allowed)} | {'**WORSE**' if c.worse else 'no'} |")
        add("")
    overlays = [(k.removeprefix("overlay:"), v) for k, v in plots.items() if k.startswith("overlay:")]
    if overlays:
        add(f"Total-energy drift of the candidate (solid) and the {section.title} (dashed), per molecule:")
        add("")
        for name, rel in overlays:
            add(f"![Energy drift of {name}: candidate vs {section.title}]({rel})")
            add("")


def plot_overlay(candidate: MoleculeResult, baseline: MoleculeResult, baseline_title: str, path: Path) -> None:
    """Plot the total-energy deviation (meV/atom) vs time of every replica of the candidate
    (solid) and of the baseline (dashed) on one set of axes, with both drift slopes in the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for who, mol, colour, style in (("candidate", candidate, "tab:blue", "-"),
                                    (baseline_title, baseline, "tab:orange", "--")):
        slope = {c.name: c for c in mol.checks}.get("drift_slope_meV_per_atom_per_ps")
        for i, r in enumerate(mol.replicas):
            label = None
            if i == 0:
                label = who + (f" (drift slope {fmt(slope.value)} {slope.unit})" if slope and slope.value is not None
                               else "")
            ax.plot(r.series.get("time_ps", []), r.series.get("e_tot_minus_e0_meV_per_atom", []), lw=1,
                    color=colour, ls=style, label=label)
            if r.failure is not None:
                ax.axvline(r.failure.time_ps, color=colour, ls=":", lw=0.8)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("E_tot(t) − E_tot(0)\n(meV/atom)")
    ax.set_title(f"{candidate.name} ({candidate.formula}): candidate vs {baseline_title}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def overlay_jobs(result: ValidationResult, section: BaselineComparison,
                 out_dir: Path) -> dict[str, tuple[str, PlotJob]]:
    """One overlaid energy plot per molecule that both results ran, under ``out_dir/plots``
    (to be drawn by :func:`mdgate.report.plots.render_all`).

    Returns:
        ``overlay:<molecule>`` → (the plot's path relative to ``out_dir``, its plot job).
    """
    if section.result is None:
        return {}
    base = {m.name: m for m in section.result.molecules}
    jobs: dict[str, tuple[str, PlotJob]] = {}
    for mol in result.molecules:
        other = base.get(mol.name)
        if other is None or not mol.replicas or not other.replicas:
            continue
        rel = f"plots/baseline_{mol.name}.png"
        jobs[f"overlay:{mol.name}"] = (rel, (plot_overlay, (mol, other, section.title, out_dir / rel)))
    return jobs
