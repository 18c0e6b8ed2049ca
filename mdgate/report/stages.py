"""The report's section per protocol stage (sanity, heat stress, oracle) and the stress plot."""

from __future__ import annotations

from pathlib import Path

from mdgate.checks.table import STAGE_TITLE, Stage
from mdgate.report.tables import fmt, label, status
from mdgate.results import CheckResult, MoleculeResult, StageResult, ValidationResult


def _check_table(checks: list[CheckResult], add, value_title: str = "Value (worst)") -> None:
    add(f"| Check | {value_title} | Bound | Status | Note |")
    add("|---|---|---|---|---|")
    for c in checks:
        bound = f"{c.comparison} {fmt(c.bound)}" if c.bound is not None else "-"
        add(f"| {label(c.name)} (`{c.name}`) | {fmt(c.value)} {c.unit} | {bound} | {status(c)} | {c.note or '-'} |")
    add("")


def stage_sections(result: ValidationResult, plots: dict[str, str], add) -> None:
    """A section per protocol stage: what ran, its figures against the bounds, time to failure."""
    if not result.stages:
        return
    add("## Protocol Stages")
    add("")
    add("| Stage | Ran | Role | Result | Time (s) | Note |")
    add("|---|---|---|---|---|---|")
    for name in Stage:
        st = result.stages.get(name)
        if st is None:
            continue
        res = {True: "PASS", False: "FAIL", None: "-"}[st.passed]
        add(f"| {STAGE_TITLE[name]} | {'yes' if st.ran else 'no'} | {'required' if st.required else 'informational'} "
            f"| {res} | {fmt(st.seconds, 3) if st.ran else '-'} | {st.note or '-'} |")
    add("")
    sanity = result.stages.get(Stage.SANITY)
    if sanity is not None and sanity.ran:
        add(f"### {STAGE_TITLE[Stage.SANITY]}")
        add("")
        s = sanity.settings
        add(f"{s.get('n_rotations')} random rotations + translations and as many same-element permutations per "
            f"molecule, {s.get('n_directions')} finite-difference directions (step {s.get('fd_step_A')} Å), all "
            f"molecules in one batch against each alone, BFGS relaxation (fmax {s.get('relax_fmax_eV_per_A')} eV/Å, "
            f"≤ {s.get('relax_steps')} steps). Worst molecule:")
        add("")
        _check_table(sanity.checks, add)
    stress = result.stages.get(Stage.STRESS)
    if stress is not None and stress.ran:
        _stress_section(stress, plots, add)
    oracle = result.stages.get(Stage.ORACLE)
    if oracle is not None and oracle.ran:
        add(f"### {STAGE_TITLE[Stage.ORACLE]}")
        add("")
        add(f"**Oracle**: {oracle.oracle}. {oracle.note}.")
        add("")
        _check_table(oracle.checks, add, "Value")
        add("| Frames from | Frames | Force R² | Force MAE (eV/Å) | Force RMSE (eV/Å) |")
        add("|---|---|---|---|---|")
        for group, v in oracle.per_molecule.items():
            label = {"all": "**all**"}.get(group, group.replace("stage:", "stage "))
            add(f"| {label} | {int(v.get('n_frames') or 0)} | {fmt(v.get('force_r2'))} "
                f"| {fmt(v.get('force_mae_eV_per_A'))} | {fmt(v.get('force_rmse_eV_per_A'))} |")
        add("")


def _stress_section(stress: StageResult, plots: dict[str, str], add) -> None:
    s = stress.settings
    add(f"### {STAGE_TITLE[Stage.STRESS]}")
    add("")
    add(f"Langevin NVT (BAOAB, friction {s.get('friction_per_ps')}/ps, {s.get('timestep_fs')} fs, seed "
        f"{s.get('seed')}): target {s.get('start_temperature_K')} → {s.get('end_temperature_K')} K over "
        f"{s.get('ramp_ps')} ps, then {s.get('hold_ps')} ps hold. Worst molecule and replica:")
    add("")
    _check_table(stress.checks, add)
    add("| Molecule | Replica | Completed | Time to failure (ps) | T at failure (K) | Target T (K) | Stopped by |")
    add("|---|---|---|---|---|---|---|")
    for mol in stress.molecules:
        for r in mol.replicas:
            f = r.failure
            add(f"| {mol.name} | {r.replica} | {fmt(r.metrics.get('completed_fraction'))} "
                f"| {fmt(f.time_ps) if f else 'none'} | {fmt(f.temperature_K) if f else '-'} "
                f"| {fmt(f.target_temperature_K) if f else fmt(r.metrics.get('max_target_temperature_K'))} "
                f"| {f.check if f else '-'} |")
    add("")
    for mol in stress.molecules:
        if f"stress:{mol.name}" in plots:
            add(f"![Heat stress of {mol.name}]({plots[f'stress:{mol.name}']})")
            add("")


def plot_stress(mol: MoleculeResult, path: Path) -> None:
    """Temperature (and its target) and stability measures vs time for the stress stage, with
    each replica's failure marked: where and how hot a model breaks shows at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for r in mol.replicas:
        t = r.series.get("time_ps", [])
        [line] = ax1.plot(t, r.series.get("temperature_K", []), lw=0.8, label=f"replica {r.replica}")
        ax2.plot(t, r.series.get("max_bond_deviation_A", []), lw=1, color=line.get_color())
        ax2.plot(t, r.series.get("min_distance_A", []), lw=1, ls="--", color=line.get_color())
        if r.failure is not None:
            for ax in (ax1, ax2):
                ax.axvline(r.failure.time_ps, color="red", ls="--", lw=0.8)
    if mol.replicas:
        ax1.plot(mol.replicas[0].series.get("time_ps", []), mol.replicas[0].series.get("target_temperature_K", []),
                 color="black", lw=1.5, label="target")
    for c in mol.checks:
        if c.name in ("max_bond_deviation_A", "min_distance_A") and c.bound is not None:
            ax2.axhline(c.bound, color="grey", ls=":", lw=1)
    ax1.set_ylabel("T (K)")
    ax2.set_ylabel("max bond dev. (solid)\nmin distance (dashed), Å")
    ax2.set_xlabel("time (ps)")
    ax1.set_title(f"{mol.name} ({mol.formula}) heat stress: {'PASS' if mol.passed else 'FAIL'}")
    if len(mol.replicas) <= 8:
        ax1.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
