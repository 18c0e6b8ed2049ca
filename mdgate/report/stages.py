"""The report's section per protocol stage (sanity, energy landscape, heat stress, oracle) and the stress plot."""

from __future__ import annotations

from pathlib import Path

from mdgate.checks.table import STAGE_TITLE, Stage
from mdgate.report.pes import pes_section
from mdgate.report.tables import check_table, fmt
from mdgate.results import MoleculeResult, StageResult, ValidationResult


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
    rate_section(result, plots, add)
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
        check_table(sanity.checks, add)
    pes_section(result, plots, add)
    stress = result.stages.get(Stage.STRESS)
    if stress is not None and stress.ran:
        _stress_section(stress, plots, add)
    oracle = result.stages.get(Stage.ORACLE)
    if oracle is not None and oracle.ran:
        add(f"### {STAGE_TITLE[Stage.ORACLE]}")
        add("")
        add(f"**Oracle**: {oracle.oracle}. {oracle.note}.")
        add("")
        check_table(oracle.checks, add, "Value")
        add("| Frames from | Frames | Force R² | Force MAE (eV/Å) | Force RMSE (eV/Å) |")
        add("|---|---|---|---|---|")
        for group, v in oracle.per_molecule.items():
            label = {"all": "**all**"}.get(group, group.replace("stage:", "stage "))
            add(f"| {label} | {int(v.get('n_frames') or 0)} | {fmt(v.get('force_r2'))} "
                f"| {fmt(v.get('force_mae_eV_per_A'))} | {fmt(v.get('force_rmse_eV_per_A'))} |")
        add("")


def rate_section(result: ValidationResult, plots: dict[str, str], add) -> None:
    """Each MD molecule's failure rate over its trajectories, with its interval, the decision,
    the confirmation replicas that ran and the times to failure.
    """
    rows = [m for m in result.molecules if m.rate is not None]
    stress = result.stages.get(Stage.STRESS)
    rows += [m for m in (stress.molecules if stress is not None else []) if m.rate is not None]
    if not rows:
        return
    r0 = rows[0].rate
    assert r0 is not None
    add("### Failure rates over trajectories")
    add("")
    add(f"A molecule fails a stage when its failure rate is shown above {100 * r0.acceptable_failure_rate:g} % and "
        f"passes when it is shown below {100 * r0.unacceptable_failure_rate:g} % (two-sided Wilson interval at "
        f"{100 * r0.confidence:g} %); between, confirmation replicas run. A trajectory fails when any required "
        "check fails on it.")
    add("")
    add("| Stage | Molecule | Trajectories | Failed | Survival | Failure rate interval | Decision "
        "| Confirmation replicas | Time to failure (ps) | Note |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for m in rows:
        r = m.rate
        assert r is not None
        lo, hi = r.interval
        times = _times(r.times_to_failure_ps)
        note = r.note or (f"fails on one trajectory: {', '.join(r.absolute_failures)}"
                          if r.absolute_failures else "-")
        add(f"| {m.stage} | {m.name} | {r.n_trajectories} | {r.n_failed} | {100 * r.survival_fraction:.0f} % "
            f"| {100 * lo:.0f}–{100 * hi:.0f} % | {r.decision.upper()} | {r.confirmation_replicas} | {times} "
            f"| {note} |")
    add("")
    if plots.get("survival"):
        add(f"![Survival under heat stress]({plots['survival']})")
        add("")


def plot_survival(mols: list[MoleculeResult], path: Path) -> None:
    """The fraction of each molecule's stress trajectories still intact against time (confirmation
    replicas included), with the Wilson interval of the end point: when and how often a model breaks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    intact: list[str] = []
    end = max(((r.series.get("time_ps") or [0.0])[-1] for m in mols for r in m.replicas), default=0.0)
    for mol in mols:
        rate = mol.rate
        if rate is None or not rate.n_failed:
            intact.append(mol.name)
            continue
        times = sorted(rate.times_to_failure_ps)
        xs = [0.0] + [t for t in times for _ in (0, 1)] + [end]
        ys, alive = [1.0], 1.0
        for _ in times:
            ys.append(alive)
            alive -= 1.0 / rate.n_trajectories
            ys.append(alive)
        ys.append(alive)
        [line] = ax.plot(xs, ys, lw=1.5, label=f"{mol.name} ({rate.n_failed}/{rate.n_trajectories} failed, "
                                               f"{rate.decision})")
        lo, hi = rate.interval
        ax.errorbar([end], [1 - (lo + hi) / 2], yerr=[[(hi - lo) / 2]], color=line.get_color(), capsize=3)
    if intact:
        ax.axhline(1.0, color="grey", lw=1, ls=":", label=f"{len(intact)} molecule{'s' if len(intact) != 1 else ''}: "
                   "every trajectory intact")
    ax.set_ylim(-0.05, 1.08)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("fraction of trajectories intact")
    ax.set_title("Heat stress: survival per molecule (bar: interval of the survival fraction)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _times(ttf: list[float]) -> str:
    if len(ttf) <= 1:
        return fmt(ttf[0], 3) if ttf else "-"
    return f"{fmt(min(ttf), 3)}–{fmt(max(ttf), 3)} (median {fmt(float(sorted(ttf)[len(ttf) // 2]), 3)})"


def _stress_section(stress: StageResult, plots: dict[str, str], add) -> None:
    s = stress.settings
    add(f"### {STAGE_TITLE[Stage.STRESS]}")
    add("")
    add(f"Langevin NVT (BAOAB, friction {s.get('friction_per_ps')}/ps, {s.get('timestep_fs')} fs, seed "
        f"{s.get('seed')}): target {s.get('start_temperature_K')} → {s.get('end_temperature_K')} K over "
        f"{s.get('ramp_ps')} ps, then {s.get('hold_ps')} ps hold. A bond counts as broken when its deviation "
        f"stays beyond the bound for {s.get('hold_fs', 0)} fs (the value is the worst level held that long). "
        "Worst molecule and replica:")
    add("")
    check_table(stress.checks, add)
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
