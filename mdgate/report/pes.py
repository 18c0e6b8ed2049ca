"""The report's section on the energy landscape (``pes`` stage) and its figure per molecule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdgate.checks.table import STAGE_TITLE, Stage
from mdgate.report.tables import check_table, fmt
from mdgate.results import StageResult, ValidationResult

#: Per-molecule columns: (header, figure key).
COLUMNS = [("conformers (window/all)", None), ("conformer ΔE max err (meV)", "conformer_energy_max_error_meV"),
           ("ranking", "conformer_rank_agreement"), ("torsions", "n_torsions"),
           ("torsion MAE (meV)", "torsion_profile_mae_meV"), ("barrier err (meV)", "torsion_barrier_error_meV"),
           ("freq MAE (cm⁻¹)", "frequency_mae_cm1"), ("imag. modes", "spurious_imaginary_modes"),
           ("contact well (meV)", "close_contact_well_meV")]


def pes_plot_jobs(result: ValidationResult, out_dir: Path) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """``{key: (relative path, plot job)}`` of the pes figures: one per molecule with two conformers
    in the window or a torsion to show.
    """
    pes = result.stages.get(Stage.PES)
    jobs: dict[str, tuple[str, tuple[Any, ...]]] = {}
    if pes is None or not pes.ran:
        return jobs
    for mol, curves in pes.curves.items():
        if len(curves.get("conformer_oracle_meV", [])) > 1 or curves.get("torsion_labels"):
            rel = f"plots/pes_{mol}.png"
            jobs[f"pes:{mol}"] = (rel, (plot_pes, (mol, curves, pes.settings, out_dir / rel)))
    return jobs


def pes_section(result: ValidationResult, plots: dict[str, str], add) -> None:
    """The stage's settings, its checks (worst molecule), a row per molecule, and the figures."""
    pes = result.stages.get(Stage.PES)
    if pes is None or not pes.ran:
        return
    s = pes.settings
    add(f"### {STAGE_TITLE[Stage.PES]}")
    add("")
    add(f"**Oracle**: {pes.oracle}. {s.get('n_conformers')} conformer embeddings per molecule relaxed by the oracle "
        f"(unique minima, those within {fmt(s.get('conformer_window_meV'))} meV of the lowest judged); relaxed "
        f"torsion scans every {fmt(s.get('torsion_step_deg'))}° (model energies at the oracle's geometries; the angles "
        f"reachable from the minimum below {fmt(s.get('torsion_window_meV'))} meV judged); harmonic frequencies, each "
        f"method at its own minimum; "
        f"every bond and every pair closer than {fmt(s.get('contact_max_distance_A'))} Å pulled together down to "
        f"{fmt(s.get('contact_min_distance_A'))} Å (wells counted up to {fmt(s.get('contact_reach_meV'))} meV on "
        f"the model's curve). Chemical accuracy is 43 meV (1 kcal/mol)."
        + (f" {pes.note[0].upper()}{pes.note[1:]}." if "cross-level" in pes.note else ""))
    add("")
    check_table(pes.checks, add)
    _molecule_table(pes, add)
    for mol in pes.curves:
        if f"pes:{mol}" in plots:
            add(f"![Energy landscape of {mol}]({plots[f'pes:{mol}']})")
            add("")


def _molecule_table(pes: StageResult, add) -> None:
    add("| Molecule | " + " | ".join(h for h, _ in COLUMNS) + " | Result |")
    add("|---|" + "---|" * (len(COLUMNS) + 1))
    for mol, f in pes.per_molecule.items():
        checks = pes.molecule_checks.get(mol, [])
        failed = [c.name for c in checks if c.required and c.passed is False]
        cells = [f"{int(f.get('n_conformers_in_window') or 0)}/{int(f.get('n_conformers') or 0)}"]
        cells += [fmt(f.get(key)) if key and f.get(key) is not None else "-" for _, key in COLUMNS[1:]]
        add(f"| {mol} | " + " | ".join(cells) + f" | {'FAIL: ' + ', '.join(failed) if failed else 'PASS'} |")
    add("")


def plot_pes(mol: str, curves: dict[str, Any], settings: dict[str, Any], path: Path) -> None:
    """Conformer energies (model against oracle) and torsion profiles (oracle solid, model dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    oracle, model = curves.get("conformer_oracle_meV", []), curves.get("conformer_model_meV", [])
    if len(oracle) > 1:
        top = max(max(oracle), max(model), 1.0) * 1.1
        ax1.plot([0, top], [0, top], color="grey", lw=1)
        ax1.fill_between([0, top], [-43, top - 43], [43, top + 43], color="grey", alpha=0.15,
                         label="±43 meV (1 kcal/mol)")
        ax1.scatter(oracle, model, color="C0", zorder=3)
        ax1.axvline(settings.get("conformer_window_meV", 250.0), color="grey", ls=":", lw=1)
        ax1.legend(fontsize=7, loc="upper left")
    else:
        ax1.text(0.5, 0.5, "one conformer", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("oracle ΔE (meV)")
    ax1.set_ylabel("model ΔE (meV)")
    ax1.set_title("conformers (relative to the oracle's lowest)")
    angles = curves.get("torsion_angles_deg", [])
    for k, name in enumerate(curves.get("torsion_labels", [])):
        ax2.plot(angles, curves["torsion_oracle_meV"][k], color=f"C{k}", lw=1.5, label=name)
        ax2.plot(angles, curves["torsion_model_meV"][k], color=f"C{k}", lw=1.2, ls="--")
    ax2.axhline(settings.get("torsion_window_meV", 250.0), color="grey", ls=":", lw=1)
    ax2.set_xlabel("torsion (°, 0 = the oracle's minimum)")
    ax2.set_ylabel("ΔE (meV): oracle solid, model dashed")
    ax2.set_title("relaxed torsion scans")
    if curves.get("torsion_labels"):
        ax2.legend(fontsize=7)
    fig.suptitle(f"{mol}: energy landscape, model against oracle")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
