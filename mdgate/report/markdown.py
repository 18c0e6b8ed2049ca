"""The validation report: Markdown (the hand-made report's structure), HTML, plots, JSON.

Every figure in the report comes from a :class:`~mdgate.results.ValidationResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from markdown_it import MarkdownIt

from mdgate.checks.table import CHECKS, Stage
from mdgate.report.champion import champion_section, overlay_jobs
from mdgate.report.pes import pes_plot_jobs
from mdgate.report.plots import PlotJob, render_all
from mdgate.report.stages import plot_stress, plot_survival, stage_sections
from mdgate.report.tables import check_rows, fmt, label, markdown_table, molecule_rows, status
from mdgate.results import REMEASURED, BaselineComparison, MoleculeResult, ValidationResult, Verdict

STATUS_LINE = {
    Verdict.APPROVED: "APPROVED FOR MD",
    Verdict.REJECTED: "NOT RECOMMENDED FOR MD",
    Verdict.ERROR: "ERROR: NOT VALIDATED",
}

def render_markdown(result: ValidationResult, plots: dict[str, str] | None = None,
                    baseline: BaselineComparison | None = None) -> str:
    """Render the report as Markdown (tables are GFM pipe tables), with the comparison with the
    baseline when one was made.
    """
    plots = plots or {}
    lines: list[str] = []
    add = lines.append
    _header(result, add)
    add("## Executive Summary")
    add("")
    add(_summary_text(result))
    add("")
    if result.verdict == Verdict.ERROR:
        add("## Conclusion")
        add("")
        add(f"The model could not be validated: {result.reason}. Fix the input and run the gate again.")
        add("")
        return "\n".join(lines)
    _results_tables(result, add)
    if baseline is not None:
        champion_section(baseline, plots, add)
    add("## Detailed Results")
    add("")
    md = result.criteria.get("config", {}).get("md", {})
    for mol in result.molecules:
        _molecule_section(mol, md, plots.get(mol.name), add)
    if result.accuracy is not None:
        _accuracy_section(result, add)
    stage_sections(result, plots, add)
    _analysis(result, add)
    add("## Conclusion")
    add("")
    add(_conclusion(result))
    add("")
    return "\n".join(lines)


def _header(result: ValidationResult, add: Callable[[str], None]) -> None:
    """Title, status line and the facts: verdict, reason, model, units, settings, protocol."""
    m, acc = result.model, result.accuracy
    md = result.criteria.get("config", {}).get("md", {})
    add(f"# MD Validation Report: {Path(m.source).name}")
    add("")
    add(f"## STATUS: {STATUS_LINE[result.verdict]}")
    add("")
    add(f"**Verdict**: {result.verdict.value}  ")
    add(f"**Reason**: {result.reason}  ")
    if result.decided_by:
        add(f"**Decided by**: `{result.decided_by}` (stage/check)  ")
    add(f"**Model**: `{m.source}`  ")
    add(f"**Parameters**: {m.n_parameters:,}  " if m.n_parameters else "**Parameters**: n/a  ")
    if m.parent:
        ratio = f"{m.compression_ratio:.1f}x" if m.compression_ratio else "n/a"
        add(f"**Parent**: {m.parent} ({fmt(m.parent_n_parameters) if m.parent_n_parameters else 'n/a'} "
            f"parameters); **Compression ratio**: {ratio}  ")
    if acc is not None:
        add(f"**Force R²**: {fmt(acc.force_r2)} on {acc.n_frames} {acc.reference_level_of_theory or ''} "
            "reference configurations  ")
    if m.runs_in:
        add(f"**Model ran**: {m.runs_in}  ")
    add(f"**Units**: energy {m.energy_unit}, positions {m.position_unit}; cutoff {fmt(m.cutoff_A)} Å  ")
    add(f"**MD settings**: NVE velocity Verlet, {md.get('timestep_fs')} fs × {md.get('n_steps')} steps "
        f"({fmt((md.get('timestep_fs') or 0) * (md.get('n_steps') or 0) / 1000)} ps), "
        f"{md.get('temperature_K')} K start, {md.get('n_replicas')} replica(s), seed {md.get('seed')}, "
        f"fail-fast {'on' if md.get('fail_fast') else 'off'}  ")
    stages = [f"{n}" + ("" if st.required else " (informational)") for n, st in result.stages.items() if st.ran]
    if stages:
        add(f"**Protocol**: {' → '.join(stages)}  ")
    stress = result.criteria.get("config", {}).get("stress", {})
    if result.stages.get("stress") is not None and result.stages["stress"].ran:
        add(f"**Heat stress**: Langevin NVT (BAOAB), {stress.get('start_temperature_K')} → "
            f"{stress.get('end_temperature_K')} K over {stress.get('ramp_ps')} ps + {stress.get('hold_ps')} ps hold, "
            f"{stress.get('n_replicas') or md.get('n_replicas')} replica(s), seed {stress.get('seed')}  ")
    add(f"**Criteria sha256**: `{result.criteria.get('sha256', '')[:16]}`  ")
    add(f"**Date**: {result.created_at}; device {result.timing.device} ({result.timing.model_call} model); "
        f"wall time {fmt(result.timing.total_s, 3)} s (MD {fmt(result.timing.md_s, 3)} s, "
        f"{fmt(result.timing.ms_per_step, 3)} ms/step)")
    add("")
    add("---")
    add("")


def _results_tables(result: ValidationResult, add: Callable[[str], None]) -> None:
    """Every check of every stage that ran, then every molecule with every stage: the same tables
    as the registry's version description.
    """
    add("### Validation Results Summary")
    add("")
    add("Every check of every stage that ran: its worst value over molecules and replicas, and on how many "
        "molecules it passed.")
    add("")
    for line in markdown_table(check_rows(result)):
        add(line)
    add(f"\n**Overall Verdict**: **{result.verdict.value.upper()}**")
    add("")
    add("## Results by Molecule")
    add("")
    for line in markdown_table(molecule_rows(result)):
        add(line)
    add("")


def _summary_text(result: ValidationResult) -> str:
    m = result.model
    if result.verdict == Verdict.ERROR:
        return f"Validation could not be carried out: **{result.reason}**."
    n_mol = len(result.molecules)
    n_traj = sum(len(x.replicas) for x in result.molecules)
    n_ok = sum(1 for x in result.molecules for r in x.replicas if r.failure is None)
    who = f"The model ({m.n_parameters:,} parameters" if m.n_parameters else "The model ("
    if m.compression_ratio:
        who += f", {m.compression_ratio:.1f}x compression vs {m.parent}"
    who += ")"
    parts = [f"{who} was run in NVE molecular dynamics on {n_mol} molecules ({n_traj} trajectories); "
             f"{n_ok}/{n_traj} trajectories ran to the end."]
    stress = result.stages.get("stress")
    if stress is not None and stress.ran:
        reps = [r for m in stress.molecules for r in m.replicas]
        failed = [r.failure for r in reps if r.failure is not None]
        text = f"Under heat stress {len(reps) - len(failed)}/{len(reps)} trajectories survived the ramp"
        if failed:
            first = min(failed, key=lambda f: f.time_ps)
            text += (f"; the earliest failure ({first.check}) came at {fmt(first.time_ps)} ps, "
                     f"{fmt(first.temperature_K)} K (target {fmt(first.target_temperature_K)} K)")
        parts.append(text + ".")
    if result.stages.get("sanity") is not None and result.stages["sanity"].passed is False:
        parts.append("It failed the sanity checks before MD, so no MD was run.")
    acc = result.accuracy
    if acc is not None:
        if acc.applicable:
            parts.append(f"Its force R² on {acc.n_frames} reference configurations is {fmt(acc.force_r2)} "
                         f"(force MAE {fmt(acc.force_mae_eV_per_A)} eV/Å).")
        else:
            parts.append(f"Accuracy is not applicable: {acc.note}.")
    if result.verdict == Verdict.APPROVED:
        parts.append("Every required check passed on every molecule and replica: the model is **APPROVED** "
                     "for MD under these criteria.")
    else:
        names = list(dict.fromkeys(f"{f.stage}/{f.check}" for f in result.failures)) or sorted(
            {f.split(": ")[1].split(" =")[0] for f in result.failed_checks})
        parts.append(f"It **FAILS** {len(result.failed_checks)} required check(s) ({', '.join(names)}) and is "
                     "**NOT RECOMMENDED** for MD.")
    return " ".join(parts)


def _molecule_section(mol: MoleculeResult, md: dict, plot: str | None, add) -> None:
    add(f"### {mol.name}")
    add("")
    add(f"**Formula**: {mol.formula}  ")
    add(f"**Atoms**: {mol.n_atoms}  ")
    for r in mol.replicas:
        if r.failure is None:
            outcome = f"Completed {r.steps_done} steps"
        else:
            outcome = (f"Stopped at step {r.failure.step} ({fmt(r.failure.time_ps)} ps) by "
                      f"{r.failure.check} = {fmt(r.failure.value)}")
        add(f"**Replica {r.replica}**: {outcome}  ")
    add("")
    add("**Energy Conservation Analysis** (replica mean):")
    s = mol.summary
    add(f"- Initial Energy: {fmt(s.get('initial_energy_eV'), 8)} eV")
    add(f"- Final Energy: {fmt(s.get('final_energy_eV'), 8)} eV")
    add(f"- Total Drift: {fmt(s.get('total_drift_percent'))} % ; Max Drift: {fmt(s.get('max_drift_percent'))} % ; "
        f"Drift Rate: {fmt(s.get('drift_rate_percent_per_ps'))} %/ps")
    add(f"- Drift slope: {fmt(s.get('drift_slope_meV_per_atom_per_ps'))} meV/atom/ps ; "
        f"max |E(t)−E0|: {fmt(s.get('max_energy_deviation_meV_per_atom'))} meV/atom ; "
        f"drift/σ(E_kin): {fmt(s.get('drift_over_kinetic_std'))}")
    add(f"- Temperature: mean {fmt(s.get('mean_temperature_K'))} K, max {fmt(s.get('max_temperature_K'))} K ; "
        f"max force {fmt(s.get('max_force_eV_per_A'))} eV/Å ; max bond deviation "
        f"{fmt(s.get('max_bond_deviation_A'))} Å")
    add("")
    add("| Check | Value (worst replica) | Replicas: mean ± std | Bound | Status | Note |")
    add("|---|---|---|---|---|---|")
    for c in mol.checks:
        bound = f"{c.comparison} {fmt(c.bound)}" if c.bound is not None else "-"
        when = f" at {fmt(c.time_ps)} ps" if c.time_ps is not None else ""
        st = mol.statistics.get(c.name)
        spread = f"{fmt(st['mean'])} ± {fmt(st['std'], 2)}" if st and st.get("n", 0) > 1 else "-"
        add(f"| {label(c.name)} | {fmt(c.value)} {c.unit}{when} | {spread} | {bound} | {status(c)} | {c.note or '-'} |")
    add("")
    add(f"**Verdict**: {'PASS' if mol.passed else 'FAIL'}")
    add("")
    if plot:
        add(f"![Energy drift of {mol.name}]({plot})")
        add("")
    add("---")
    add("")


def _accuracy_section(result: ValidationResult, add) -> None:
    acc = result.accuracy
    assert acc is not None
    add("## Accuracy on the Reference Set")
    add("")
    add(f"Reference: {acc.n_frames} configurations, level of theory {acc.reference_level_of_theory or 'undeclared'}; "
        f"model level of theory {acc.model_level_of_theory or 'undeclared'}. {acc.note}")
    add("")
    add("| Molecule | Frames | Force R² | Force MAE (eV/Å) | Force RMSE (eV/Å) | Energy MAE (meV/atom) |")
    add("|---|---|---|---|---|---|")
    for name, v in acc.per_molecule.items():
        add(f"| {name} | {int(v['n_frames'])} | {fmt(v['force_r2'])} | {fmt(v['force_mae_eV_per_A'])} "
            f"| {fmt(v['force_rmse_eV_per_A'])} | {fmt(v['energy_mae_meV_per_atom'])} |")
    add(f"| **all** | {acc.n_frames} | {fmt(acc.force_r2)} | {fmt(acc.force_mae_eV_per_A)} "
        f"| {fmt(acc.force_rmse_eV_per_A)} | {fmt(acc.energy_mae_meV_per_atom)} |")
    add("")


def _analysis(result: ValidationResult, add) -> None:
    add("## Analysis")
    add("")
    failing: dict[str, list[str]] = {}
    for rec in result.failures:
        failing.setdefault(rec.check, []).append(rec.where if rec.stage in ("nve", "accuracy")
                                                 else f"{rec.stage}/{rec.where}")
    if not result.failures:
        for f in result.failed_checks:
            where, rest = f.split(": ", 1)
            failing.setdefault(rest.split(" =")[0], []).append(where)
    if not failing:
        add("No required check failed. The energy drift, stability and accuracy figures above are within "
            "their bounds on every trajectory.")
        info = [c for m in result.molecules for c in m.checks if not c.required and c.passed is False]
        if info:
            add("")
            add("Informational checks outside their bounds (they do not decide the verdict): "
                + ", ".join(sorted({c.name for c in info})) + ".")
    for name, places in failing.items():
        add(f"### {name}")
        add("")
        meaning = CHECKS[name].meaning if name in CHECKS else "see the check definition"
        add(f"Failed on: {', '.join(places)}. Meaning: {meaning}.")
        add("")
    add("")
    add("## Recommendations")
    add("")
    if result.verdict == Verdict.APPROVED:
        add("- The model may be used for NVE/NVT MD of molecules like those validated, at this time step.")
        add("- Validate again on new chemistry (elements, sizes, temperatures) outside this set.")
    else:
        add("### DO NOT USE this model for:")
        add("- Molecular dynamics simulations under the validated conditions")
        if "min_force_r2" in failing:
            add("- Anything requiring accurate forces (structure relaxation, vibrational analysis)")
        add("")
        add("### Next steps")
        if "min_force_r2" in failing:
            add("- Improve force accuracy (more capacity, longer training, more force weight) and re-register.")
        if {"drift_slope_meV_per_atom_per_ps", "max_energy_deviation_meV_per_atom"} & failing.keys():
            add("- Check that forces are the negative gradient of the energy and try a smaller time step.")
        if {"max_bond_deviation_A", "completion", "finite", "max_temperature_K", "max_force_eV_per_A"} & failing.keys():
            add("- Add training data near the failing geometries (high-temperature or distorted configurations).")
    add("")


def _conclusion(result: ValidationResult) -> str:
    m = result.model
    name = Path(m.source).name
    if result.verdict == Verdict.APPROVED:
        return f"**{name} is APPROVED for molecular dynamics** under the applied criteria: {result.reason}."
    return f"**{name} is NOT RECOMMENDED for molecular dynamics**: {result.reason}."


def render_html(markdown: str, title: str = "mdgate report") -> str:
    """Render the Markdown report to a standalone HTML page with markdown-it-py."""
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")


def plot_molecule(mol: MoleculeResult, path: Path) -> None:
    """Plot total-energy deviation (meV/atom) and temperature vs time for every replica.

    Each replica's fitted drift is drawn as a dotted line (the least-squares line of the drift
    check, through the mean of the recorded points), and the energy checks' worst values are
    printed against their bounds, so how close a model is to failing shows at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for r in mol.replicas:
        t = np.asarray(r.series.get("time_ps", []), float)
        e = np.asarray(r.series.get("e_tot_minus_e0_meV_per_atom", []), float)
        [line] = ax1.plot(t, e, lw=1, label=f"replica {r.replica}")
        slope = r.metrics.get("drift_slope_meV_per_atom_per_ps")
        if slope is not None and np.isfinite(slope) and len(t) == len(e) > 1 and np.isfinite(e).all():
            ax1.plot(t, e.mean() + slope * (t - t.mean()), color=line.get_color(), ls=":", lw=1.5)
        ax2.plot(t, r.series.get("temperature_K", []), lw=1)
        if r.failure is not None:
            ax1.axvline(r.failure.time_ps, color="red", ls="--", lw=0.8)
    checks = {c.name: c for c in mol.checks}
    notes = []
    for key, text in (("drift_slope_meV_per_atom_per_ps", "|drift slope| (dotted)"),
                       ("max_energy_deviation_meV_per_atom", "max |E−E0|")):
        c = checks.get(key)
        if c is not None and c.value is not None:
            bound = f", bound {fmt(c.bound)}" if c.bound is not None else ""
            notes.append(f"{text}: {fmt(c.value)} {c.unit}{bound}")
    if notes:
        ax1.text(0.01, 0.03, "\n".join(notes), transform=ax1.transAxes, fontsize=7, va="bottom",
                 bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax1.set_ylabel("E_tot(t) − E_tot(0)\n(meV/atom)")
    ax2.set_ylabel("T (K)")
    ax2.set_xlabel("time (ps)")
    ax1.set_title(f"{mol.name} ({mol.formula}): {'PASS' if mol.passed else 'FAIL'}")
    if len(mol.replicas) <= 8:
        ax1.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(result: ValidationResult, out_dir: Path,
                 baseline: BaselineComparison | None = None, plot_workers: int | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``results.json`` and ``plots/*.png`` to ``out_dir``;
    with a ``baseline``, the side-by-side section, its overlaid plots and, when the gate measured
    the baseline itself, its result as ``baseline_results.json``.

    The plots are drawn in ``plot_workers`` processes (default: one per core, see
    :func:`mdgate.report.plots.render_all`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    jobs: list[PlotJob] = []
    files: dict[str, Path] = {}

    def add_plot(key: str, rel: str, job: PlotJob) -> None:
        plots[key] = rel
        files[rel] = out_dir / rel
        jobs.append(job)

    for mol in result.molecules:
        mol.plot = f"plots/energy_{mol.name}.png"
        add_plot(mol.name, mol.plot, (plot_molecule, (mol, out_dir / mol.plot)))
    stress = result.stages.get(Stage.STRESS)
    for mol in stress.molecules if stress is not None else []:
        mol.plot = f"plots/stress_{mol.name}.png"
        add_plot(f"stress:{mol.name}", mol.plot, (plot_stress, (mol, out_dir / mol.plot)))
    if stress is not None and any(m.rate is not None and m.rate.n_failed for m in stress.molecules):
        add_plot("survival", "plots/survival_stress.png", (plot_survival, (stress.molecules,
                                                                          out_dir / "plots/survival_stress.png")))
    for key, (rel, job) in pes_plot_jobs(result, out_dir).items():
        add_plot(key, rel, job)
    if baseline is not None:
        result.baseline = baseline.record()
        for key, (rel, job) in overlay_jobs(result, baseline, out_dir).items():
            add_plot(key, rel, job)
        if baseline.result is not None and baseline.origin == REMEASURED:
            files["baseline_results.json"] = out_dir / "baseline_results.json"
            files["baseline_results.json"].write_text(baseline.result.model_dump_json(indent=1), encoding="utf-8")
    if jobs:
        (out_dir / "plots").mkdir(exist_ok=True)
        render_all(jobs, plot_workers)
    markdown = render_markdown(result, plots, baseline)
    files["report.md"] = out_dir / "report.md"
    files["report.md"].write_text(markdown)
    files["report.html"] = out_dir / "report.html"
    files["report.html"].write_text(render_html(markdown, f"mdgate: {result.verdict.value}"))
    files["results.json"] = out_dir / "results.json"
    # pydantic writes NaN/inf (a model that returned NaN) as null: json.dumps would write NaN,
    # which is not JSON and breaks strict readers of the contract.
    files["results.json"].write_text(result.model_dump_json(indent=1), encoding="utf-8")
    return files
