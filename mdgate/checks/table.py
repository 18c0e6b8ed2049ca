"""The one table of checks: what each measures, its unit, direction, default bound per stage,
whether MD observes it live and stops on it, and how the report and the registry show it.

Config (``mdgate.config``), the MD observers and stop limits (``mdgate.md``), the evaluation
(``mdgate.checks.evaluate``), the report (``mdgate.report``) and the registry summary and figures
all read this table. A new check is one row here plus the function that measures it: an MD
observer (``mdgate.md.observers``) for a check with ``stops_md``, else a trajectory metric
(``mdgate.checks.metrics``) or a stage's own measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """The stages of the validation protocol, in the order they run."""

    SANITY = "sanity"
    PES = "pes"
    NVE = "nve"
    STRESS = "stress"
    ACCURACY = "accuracy"
    ORACLE = "oracle"


#: What each stage is, for the report's section titles.
STAGE_TITLE: dict[Stage, str] = {
    Stage.SANITY: "Sanity (before MD)",
    Stage.PES: "Energy landscape against the oracle (before MD)",
    Stage.NVE: "NVE at 300 K: energy conservation and stability",
    Stage.STRESS: "Heat stress: NVT temperature ramp",
    Stage.ACCURACY: "Accuracy on the reference set",
    Stage.ORACLE: "On-trajectory accuracy (oracle)",
}


@dataclass(frozen=True)
class CheckSpec:
    """One check.

    Attributes:
        name: the key in configs, ``results.json`` and stop limits; carries its unit.
        unit: unit of the measured value, as printed.
        label: short label in report tables.
        meaning: what a failure means (report's analysis section).
        lower: the value must be ``>=`` the bound (else ``<=``); a live check's worst value over
            a run is then its minimum (else its maximum).
        stops_md: observed live every record step by an MD observer, recorded as a series and
            reduced over the run; crossing a required bound stops the trajectory.
        column: column header in the summary tables (``None``: report only).
        figure: searchable figure of the verdict (a metric of the version's verdict in the
            registry) holding the worst value over the molecules (``None``: none).
        held: a live check whose bound counts as crossed only when it stays crossed for the
            stage's ``hold_fs`` (a broken bond stays broken; a vibration's overshoot does not), and
            whose value over a run is the worst level it held that long. Not for events that are
            unphysical at any instant (two atoms at 0.6 Å, an H 2.5 Å from every atom).
        by_rate: a trajectory failing it counts toward its molecule's failure rate, decided with
            confidence over replicas (``rates`` in the config); ``False``: one failing trajectory
            fails the molecule.
    """

    name: str
    unit: str
    label: str
    meaning: str
    lower: bool = False
    stops_md: bool = False
    column: str | None = None
    figure: str | None = None
    held: bool = False
    by_rate: bool = True

    @property
    def reduction(self) -> str:
        """How a run's records reduce to one value: ``min`` for a lower bound, else ``max``."""
        return "min" if self.lower else "max"

    @property
    def comparison(self) -> str:
        """``>=`` or ``<=``."""
        return ">=" if self.lower else "<="


_SPECS = [
    # ---- MD stability (NVE and stress stages)
    CheckSpec("completion", "fraction of steps", "Simulations completed",
              "trajectories did not run to the end: the dynamics broke down before the asked time", lower=True),
    CheckSpec("finite", "non-finite events", "Numerical stability (finite)",
              "energies, forces or positions became NaN/inf: the model is numerically unusable for MD",
              by_rate=False),
    CheckSpec("max_force_eV_per_A", "eV/Å", "Force bound",
              "forces grew beyond any physical value for a molecule at this temperature",
              stops_md=True, column="max force (eV/Å)"),
    CheckSpec("max_temperature_K", "K", "No temperature blow-up",
              "kinetic energy exploded: potential energy was converted into heat, the signature of an "
              "unstable or non-conservative potential", stops_md=True, column="max T (K)"),
    CheckSpec("max_temperature_excess_K", "K", "Temperature above the thermostat target",
              "the temperature ran away from the thermostat's target: the potential releases energy faster "
              "than the thermostat removes it (an explosion, MLIPAudit's T > T0 + 10 000 K criterion)",
              stops_md=True),
    CheckSpec("temperature_jump_factor", "×", "Temperature jump between records",
              "the temperature jumped by a large factor between two records: a sudden release of energy "
              "(MLIPAudit's ×100 criterion)", stops_md=True),
    CheckSpec("max_bond_deviation_A", "Å", "Structural stability (bonds)",
              "a covalent bond stretched or compressed by more than the bound: the molecule fell apart or "
              "fused (Fu et al., 'Forces are not enough', 2023)", stops_md=True, column="max bond dev (Å)",
              held=True),
    CheckSpec("min_distance_A", "Å", "Closest approach of two atoms",
              "two atoms came closer than any chemical bond: the potential lacks short-range repulsion "
              "(a 'hole' that MD falls into)", lower=True, stops_md=True),
    CheckSpec("isolated_h_atoms", "atoms", "H atoms lost",
              "a hydrogen atom left the molecule (farther than the bound from every other atom, "
              "MLIPAudit's criterion)", stops_md=True),
    # ---- energy conservation (NVE stage)
    CheckSpec("drift_slope_meV_per_atom_per_ps", "meV/atom/ps", "Energy drift slope",
              "total energy drifts systematically: forces are not the gradient of the energy, or are too "
              "rough for the time step", column="drift slope (meV/atom/ps)", figure="worst_drift_meV_per_atom_per_ps"),
    CheckSpec("max_energy_deviation_meV_per_atom", "meV/atom", "Max energy deviation",
              "total energy departs from its initial value by more than the bound: energy is not conserved",
              stops_md=True, column="max |E-E0| (meV/atom)"),
    CheckSpec("total_drift_percent", "%", "Energy conservation (seed %)",
              "total energy changed by more than the hand-made report's 1 % threshold"),
    CheckSpec("drift_over_kinetic_std", "", "Drift over σ(E_kin)",
              "the energy drift is large against the natural kinetic-energy fluctuation"),
    # ---- accuracy (reference set, and oracle on the model's own frames)
    CheckSpec("min_force_r2", "", "Force R²",
              "forces disagree with the reference method: the model has not learned the potential energy "
              "surface it is meant to reproduce", lower=True, column="force R²"),
    CheckSpec("force_mae_eV_per_A", "eV/Å", "Force MAE",
              "forces are off by more than the bound on average"),
    CheckSpec("energy_mae_meV_per_atom", "meV/atom", "Energy MAE",
              "energies are off by more than the bound on average"),
    # ---- sanity (before MD)
    CheckSpec("rotation_energy_error_meV_per_atom", "meV/atom", "Energy under rotation/translation",
              "the energy changes when the molecule is rotated or translated: the model is not invariant"),
    CheckSpec("force_rotation_error_eV_per_A", "eV/Å", "Forces rotate with the molecule",
              "forces do not rotate with the molecule: the model is not equivariant"),
    CheckSpec("permutation_energy_error_meV_per_atom", "meV/atom", "Energy under permutation",
              "the energy depends on the order of same-element atoms"),
    CheckSpec("batch_force_error_eV_per_A", "eV/Å", "Batched = single",
              "a molecule's forces depend on the other molecules in the batch: batched MD is not valid"),
    CheckSpec("fd_force_error_relative", "", "Finite-difference energy–force consistency",
              "forces are not the negative gradient of the energy (non-conservative forces): NVE energy "
              "will drift"),
    CheckSpec("net_torque_eV", "eV", "Net torque",
              "the forces exert a net torque on an isolated molecule: they are not the gradient of a "
              "rotation-invariant energy and spin the molecule up in MD"),
    CheckSpec("relax_rmsd_A", "Å", "Relaxation RMSD",
              "the model's minimum is far from the reference geometry (MLIPAudit bound 0.075 Å)"),
    CheckSpec("relax_max_force_eV_per_A", "eV/Å", "Relaxation converged",
              "the optimizer did not reach a minimum within its step budget"),
    # ---- energy landscape against the oracle (pes stage, before MD)
    CheckSpec("conformer_energy_max_error_meV", "meV", "Conformer energies (max error)",
              "the model orders or spaces the molecule's conformers wrongly: populations and barriers from its "
              "MD are wrong even where its forces look accurate"),
    CheckSpec("conformer_energy_mae_meV", "meV", "Conformer energies (mean error)",
              "relative conformer energies are off on average"),
    CheckSpec("conformer_rank_agreement", "fraction of pairs", "Conformer ranking",
              "the model ranks pairs of conformers in another order than the oracle", lower=True),
    CheckSpec("conformer_relax_rmsd_A", "Å", "Oracle minima are model minima",
              "relaxed on the model, an oracle minimum moves away: the model's minima sit elsewhere"),
    CheckSpec("torsion_profile_mae_meV", "meV", "Torsion profiles",
              "rotating a bond costs another energy on the model than on the oracle: conformational dynamics "
              "are wrong"),
    CheckSpec("torsion_barrier_error_meV", "meV", "Torsion barriers",
              "a rotational barrier is too high or too low: conformer interconversion rates are wrong"),
    CheckSpec("frequency_mae_cm1", "cm⁻¹", "Harmonic frequencies",
              "the curvature of the landscape at the minimum is wrong: vibrational spectra and zero-point "
              "energies are off"),
    CheckSpec("frequency_max_error_cm1", "cm⁻¹", "Largest frequency error",
              "one vibrational mode is far off"),
    CheckSpec("spurious_imaginary_modes", "modes", "Spurious imaginary modes",
              "the oracle's minimum is a saddle point of the model: the model's landscape has another shape there"),
    CheckSpec("close_contact_well_meV", "meV", "Close contacts repel",
              "pushing two atoms together lowers the model's energy where the oracle's rises: a short-range hole "
              "that hot MD will fall into"),
]

#: Every check by name.
CHECKS: dict[str, CheckSpec] = {s.name: s for s in _SPECS}

#: Default (bound, required) of each check in each stage's criteria. ``None`` bound: reported only.
#: Sources and measured margins are in docs/protocol.md.
DEFAULTS: dict[Stage, dict[str, tuple[float | None, bool]]] = {
    Stage.NVE: {
        "max_force_eV_per_A": (25.0, True),
        "max_temperature_K": (2000.0, True),
        "temperature_jump_factor": (100.0, True),
        "max_bond_deviation_A": (0.5, True),
        "min_distance_A": (0.6, True),
        "isolated_h_atoms": (0.0, True),
        "drift_slope_meV_per_atom_per_ps": (0.5, True),
        "max_energy_deviation_meV_per_atom": (2.0, True),
        "total_drift_percent": (1.0, False),
        "drift_over_kinetic_std": (None, False),
    },
    Stage.ACCURACY: {
        "min_force_r2": (0.95, True),
        "force_mae_eV_per_A": (None, False),
        "energy_mae_meV_per_atom": (None, False),
    },
    Stage.STRESS: {
        "max_force_eV_per_A": (40.0, True),
        "max_temperature_excess_K": (10000.0, True),
        "temperature_jump_factor": (100.0, True),
        "max_bond_deviation_A": (0.5, True),
        "min_distance_A": (0.6, True),
        "isolated_h_atoms": (0.0, True),
    },
    Stage.ORACLE: {
        "min_force_r2": (0.9, True),
        "force_mae_eV_per_A": (None, False),
    },
    Stage.PES: {
        # Calibrated on the demo's teacher against GFN2-xTB (scripts/calibrate_pes.py,
        # benchmarks/results/pes_calibration.md; margins in docs/protocol.md). The teacher's worst
        # molecule: torsion profile 85 meV, barrier 174 meV (both aspirin's acetyl rotation, 2 and
        # 4 kcal/mol), frequencies 52 cm⁻¹ (naphthalene): bounds at 2× (profile, frequencies) and
        # 1.44× (barrier). Informational: conformer energies (no model here learned the rotamers
        # behind barriers its training MD never crossed: the teacher is 139 meV off on salicylic
        # acid's second one) and imaginary modes (every model here, the teacher included, turns a
        # caffeine N-methyl rotor of a few meV the other way).
        "conformer_energy_max_error_meV": (100.0, False),
        "conformer_energy_mae_meV": (None, False),
        "conformer_rank_agreement": (None, False),
        "conformer_relax_rmsd_A": (None, False),
        "torsion_profile_mae_meV": (170.0, True),
        "torsion_barrier_error_meV": (250.0, True),
        "frequency_mae_cm1": (100.0, True),
        "frequency_max_error_cm1": (None, False),
        "spurious_imaginary_modes": (0.0, False),
        # A well deeper than kT at the stress ramp's 1000 K (86 meV) traps hot MD; the teacher has none.
        "close_contact_well_meV": (100.0, True),
    },
    Stage.SANITY: {
        # Measured on the example models (docs/protocol.md): float32 rounding gives ≤ 0.0006 meV/atom,
        # 8e-5 eV/Å, fd ≤ 0.0009, torque ≤ 1e-5 eV; a curl field of 0.01 eV/Å² gives fd 0.012,
        # torque 2.9 eV, force rotation error 0.096 eV/Å.
        "rotation_energy_error_meV_per_atom": (0.05, True),
        "force_rotation_error_eV_per_A": (0.01, True),
        "permutation_energy_error_meV_per_atom": (0.05, True),
        "batch_force_error_eV_per_A": (0.001, True),
        "fd_force_error_relative": (0.005, True),
        "net_torque_eV": (0.01, True),
        # MLIPAudit's bound; informational: floppy molecules (malonaldehyde) relax into another
        # conformer with well-trained models (docs/protocol.md).
        "relax_rmsd_A": (0.075, False),
        "relax_max_force_eV_per_A": (None, False),
    },
}

#: Distance (Å) beyond which an H atom with no other atom nearer counts as lost (MLIPAudit).
H_LOSS_DISTANCE_A = 2.5


def live_checks() -> list[str]:
    """The checks MD observes every record step and may stop on, in table order (the first one
    crossed names a trajectory's failure).
    """
    return [s.name for s in _SPECS if s.stops_md]


def held_checks() -> list[str]:
    """The live checks whose bound must stay crossed for the stage's ``hold_fs``."""
    return [s.name for s in _SPECS if s.stops_md and s.held]


def add_check(new: CheckSpec, defaults: dict[Stage, tuple[float | None, bool]]) -> None:
    """Add a row to the table, with its default (bound, required) per stage.

    Config models are built from the table when :mod:`mdgate.config` is first imported: add
    checks before that (a plugin module imported first).

    Raises:
        ValueError: a check of that name exists.
    """
    if new.name in CHECKS:
        raise ValueError(f"check {new.name!r} exists already")
    _SPECS.append(new)
    CHECKS[new.name] = new
    for stage, default in defaults.items():
        DEFAULTS[stage][new.name] = default


def spec(name: str) -> CheckSpec:
    """The specification of check ``name``.

    Raises:
        KeyError: naming the unknown check and the known ones.
    """
    try:
        return CHECKS[name]
    except KeyError:
        raise KeyError(f"unknown check {name!r}; known: {sorted(CHECKS)}") from None


def summary_columns() -> list[tuple[str, str]]:
    """(column header, check name) of the per-molecule summary tables, in table order."""
    return [(s.column, s.name) for s in _SPECS if s.column]


def figure_checks() -> list[CheckSpec]:
    """The checks whose worst value is a searchable figure of the verdict."""
    return [s for s in _SPECS if s.figure]
