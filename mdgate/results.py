"""The measured outcome of a validation: what ``results.json`` holds (a contract)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Verdict(StrEnum):
    """The three outcomes of a gate."""

    APPROVED = "Approved"
    REJECTED = "Rejected"
    ERROR = "Error"


class CheckResult(BaseModel):
    """One check: the measured value with its unit, the bound, and whether it passed.

    ``passed`` is ``None`` when the check does not apply (e.g. accuracy against a reference of
    another level of theory); that is reported, never counted as a pass.
    """

    name: str
    value: float | None
    unit: str
    bound: float | None
    comparison: str = "<="
    passed: bool | None
    required: bool
    step: int | None = None
    time_ps: float | None = None
    note: str = ""


class FailureInfo(BaseModel):
    """Where a trajectory stopped early: the time to failure and the temperature reached."""

    check: str
    step: int
    time_ps: float
    value: float | None
    temperature_K: float | None = None
    target_temperature_K: float | None = None


class ReplicaResult(BaseModel):
    """One trajectory (molecule × replica)."""

    replica: int
    steps_done: int
    failure: FailureInfo | None = None
    metrics: dict[str, float | None]
    checks: list[CheckResult]
    series: dict[str, list[float]] = Field(default_factory=dict)
    """Time series for plots (``time_ps``, ``e_tot_minus_e0_meV_per_atom``, ``temperature_K``)."""


class FailureRate(BaseModel):
    """A molecule's failure rate over its trajectories in one MD stage, and what it decided."""

    n_trajectories: int
    n_failed: int
    """Trajectories on which a required check failed."""
    confidence: float
    interval: tuple[float, float]
    """Two-sided Wilson interval of the failure rate at ``confidence``."""
    acceptable_failure_rate: float
    unacceptable_failure_rate: float
    decision: str
    """``pass``, ``fail`` or ``undecided`` (at the cap, or not confirmed because the stage failed)."""
    confirmation_replicas: int = 0
    """Trajectories run beyond the stage's first replicas because the rate was undecided."""
    absolute_failures: list[str] = Field(default_factory=list)
    """Checks that fail their molecule on one trajectory (``CheckSpec.by_rate`` false) and did."""
    times_to_failure_ps: list[float] = Field(default_factory=list)
    note: str = ""

    @property
    def survival_fraction(self) -> float:
        """Trajectories that survived, as a fraction."""
        return 1.0 - self.n_failed / self.n_trajectories if self.n_trajectories else 0.0

    def line(self) -> str:
        """``2/12 failed (failure rate 4–39 % at 90 %)``."""
        lo, hi = self.interval
        return (f"{self.n_failed}/{self.n_trajectories} failed (failure rate {100 * lo:.0f}–{100 * hi:.0f} % "
                f"at {100 * self.confidence:.0f} %)")


class MoleculeResult(BaseModel):
    """All replicas of one molecule, with a summary over them (worst value per check)."""

    name: str
    formula: str
    n_atoms: int
    steps_asked: int
    passed: bool
    summary: dict[str, float | None]
    checks: list[CheckResult]
    replicas: list[ReplicaResult]
    plot: str | None = None
    statistics: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per check across replicas: ``mean``, ``std``, ``min``, ``max`` of the measured values."""
    stage: str = "nve"
    rate: FailureRate | None = None
    """The failure rate over the replicas and its decision (``None``: rates off)."""


class AccuracyResult(BaseModel):
    """Accuracy on the reference set."""

    applicable: bool
    reference_level_of_theory: str | None
    model_level_of_theory: str | None
    n_frames: int = 0
    force_r2: float | None = None
    force_mae_eV_per_A: float | None = None
    force_rmse_eV_per_A: float | None = None
    energy_mae_meV_per_atom: float | None = None
    per_molecule: dict[str, dict[str, float]] = Field(default_factory=dict)
    checks: list[CheckResult] = Field(default_factory=list)
    note: str = ""


class ModelInfo(BaseModel):
    """Facts about the validated model."""

    source: str
    n_parameters: int | None = None
    parent: str | None = None
    parent_n_parameters: int | None = None
    compression_ratio: float | None = None
    cutoff_A: float | None = None
    energy_unit: str = "eV"
    position_unit: str = "Angstrom"
    energy_key: str = "energy"
    forces_key: str = "forces"
    level_of_theory: str | None = None
    runs_in: str | None = None
    """Where the model's code ran: in the engine's process (weights only) or a model process,
    and how that process was confined."""


class Timing(BaseModel):
    """Where the time went."""

    total_s: float = 0.0
    md_s: float = 0.0
    accuracy_s: float = 0.0
    device: str = "cpu"
    md_steps: int = 0
    ms_per_step: float | None = None
    atom_steps_per_s: float | None = None
    model_call: str = "eager"
    """``compiled`` when the model ran through ``torch.compile``, else why it ran eagerly."""
    sanity_s: float = 0.0
    pes_s: float = 0.0
    stress_s: float = 0.0
    oracle_s: float = 0.0


class FailedCheck(BaseModel):
    """A required check that failed, as a record (the verdict's reason is built from these)."""

    stage: str
    where: str
    """Molecule name, or ``all`` for a check over the whole set (accuracy)."""
    check: str
    value: float | None
    unit: str
    bound: float | None
    comparison: str
    n_failed: int = 1
    n_total: int = 1
    time_ps: float | None = None
    temperature_K: float | None = None
    rate: str | None = None
    """The molecule's failure rate as decided (:meth:`FailureRate.line`)."""
    undecided: bool = False
    """Failed because its molecule's failure rate was still undecided at the replica cap."""

    def line(self) -> str:
        """The one-line form (``failed_checks`` of ``results.json``)."""
        where = {"nve": self.where, "accuracy": "accuracy"}.get(self.stage, f"{self.stage}/{self.where}")
        at = f" at {self.time_ps:.3f} ps" if self.time_ps is not None else ""
        if self.temperature_K is not None:
            at += f", {self.temperature_K:.0f} K"
        md_stage = self.n_total > 1 or self.stage in ("nve", "stress")
        reps = f"; {self.n_failed}/{self.n_total} replicas" if md_stage else ""
        if self.rate:
            reps = f"; {self.rate}" + ("; undecided at the replica cap" if self.undecided else "")
        return (f"{where}: {self.check} = {fmt(self.value)} {self.unit}".rstrip()
                + f" (bound {self.comparison} {fmt(self.bound)}{reps}{at})")


def fmt(x: float | None, digits: int = 4) -> str:
    """A measured number as reports, tables and reasons print it (``n/a`` when missing or not finite)."""
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return "n/a"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.3e}"


class StageResult(BaseModel):
    """One stage of the protocol: whether it ran, its checks, figures and time."""

    stage: str
    ran: bool
    required: bool
    passed: bool | None = None
    """``None``: did not run, or has no required check."""
    seconds: float = 0.0
    note: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    checks: list[CheckResult] = Field(default_factory=list)
    """Each check's worst value over the molecules."""
    molecules: list[MoleculeResult] = Field(default_factory=list)
    """MD stages other than NVE (NVE's are ``ValidationResult.molecules``)."""
    per_molecule: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    """Sanity and oracle figures per molecule (oracle: also per stage, ``stage:nve``, and ``all``)."""
    molecule_checks: dict[str, list[CheckResult]] = Field(default_factory=dict)
    """Sanity: the checks of each molecule."""
    oracle: str | None = None
    """Oracle and pes stages: who judged."""
    curves: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Pes stage: per molecule, the conformer energies and torsion profiles of model and oracle (meV)."""


class ComparedFigure(BaseModel):
    """One figure of the candidate against its baseline's."""

    where: str
    """Where the figure was measured: ``<stage>/<molecule>``, a stage, or ``accuracy``."""
    check: str
    candidate: float
    baseline: float
    unit: str
    comparison: str
    allowed: float
    """The worst value the candidate may have (the baseline's, moved by the rule's limits)."""
    worse: bool

    def line(self) -> str:
        """One line for the reason and the report."""
        return (f"{self.where}: {self.check} = {self.candidate:.4g} vs {self.baseline:.4g} {self.unit}".rstrip()
                + f" (allowed {self.comparison} {self.allowed:.4g})")


class BaselineResult(BaseModel):
    """The comparison with a baseline (the champion or the parent), as the gate made it."""

    role: str
    """``champion`` or ``parent``."""
    version: str | None = None
    """The baseline (``v3``, or ``other-model v3``); ``None``: there was none to compare with."""
    origin: str = ""
    """``stored`` (its own validation run, same criteria), ``re-measured`` (by this gate), or empty."""
    note: str = ""
    """The sentence of the verdict's reason about the comparison."""
    figures: list[ComparedFigure] = Field(default_factory=list)


class ValidationResult(BaseModel):
    """Everything a validation measured and decided (serialised as ``results.json``)."""

    verdict: Verdict
    reason: str
    model: ModelInfo
    criteria: dict[str, Any]
    molecules: list[MoleculeResult] = Field(default_factory=list)
    accuracy: AccuracyResult | None = None
    failed_checks: list[str] = Field(default_factory=list)
    failures: list[FailedCheck] = Field(default_factory=list)
    """The failed required checks as records, deciding one first."""
    decided_by: str | None = None
    """``stage/check`` that decided a rejection (the first failure in protocol order)."""
    stages: dict[str, StageResult] = Field(default_factory=dict)
    """Every stage of the protocol (``sanity``, ``nve``, ``accuracy``, ``stress``, ``oracle``)."""
    timing: Timing = Field(default_factory=Timing)
    baseline: BaselineResult | None = None
    """The comparison with the champion or parent, when the gate made one (``None``: not asked)."""
    created_at: str = ""
    mdgate_version: str = ""


#: One compared figure of the candidate and its baseline (the record ``results.json`` keeps).
Comparison = ComparedFigure


STORED = "stored"
"""The baseline's figures come from its own validation run (same criteria)."""
REMEASURED = "re-measured"
"""The gate ran the baseline itself on the candidate's molecules and seeds, under the current criteria."""


@dataclass
class BaselineComparison:
    """What the report says about the baseline: who it is, where its figures come from, and the
    compared figures.
    """

    role: str
    """``champion`` (the version holding ``approved``) or ``parent``."""
    label: str | None
    """The baseline version (``v3``, or ``other-model v3``); ``None`` when there is none."""
    note: str
    """The sentence about the comparison that the verdict's reason carries."""
    origin: str = ""
    """:data:`STORED`, :data:`REMEASURED`, or empty when no figures were obtained."""
    origin_note: str = ""
    """Why the figures were re-measured (or could not be obtained)."""
    comparisons: list[Comparison] = field(default_factory=list)
    result: ValidationResult | None = None
    """The baseline's own result (its energy series are overlaid on the candidate's)."""

    def record(self) -> BaselineResult:
        """The comparison as ``results.json`` keeps it."""
        return BaselineResult(role=self.role, version=self.label, origin=self.origin, note=self.note,
                              figures=list(self.comparisons))

    @property
    def title(self) -> str:
        """``champion v3`` / ``parent other-model v3``."""
        return f"{self.role} {self.label}" if self.label else self.role


class PlacedCheck(BaseModel):
    """A check of a result with where it was measured."""

    stage: str
    molecule: str | None
    """The molecule, or ``None`` for a check over the whole stage (its worst value, or a set-wide figure)."""
    check: CheckResult

    @property
    def where(self) -> str:
        """``<stage>/<molecule>`` or ``<stage>``."""
        return f"{self.stage}/{self.molecule}" if self.molecule is not None else self.stage


#: The order in which a result's checks are walked (the first failure decides). The energy
#: landscape runs before MD but is named last: a model that breaks in MD is named for that first.
PROTOCOL_ORDER = ("sanity", "nve", "accuracy", "stress", "oracle", "pes")


def _stage_molecules(result: ValidationResult, name: str) -> list[tuple[str, list[CheckResult]]]:
    stage = result.stages.get(name)
    if name == "nve":
        return [(m.name, m.checks) for m in result.molecules]
    if stage is None:
        return []
    if stage.molecules:
        return [(m.name, m.checks) for m in stage.molecules]
    return list(stage.molecule_checks.items())


def iter_checks(result: ValidationResult, *, per_molecule: bool = True,
                per_stage: bool = False) -> Iterator[PlacedCheck]:
    """Every check of ``result`` with its place, stage by stage in protocol order.

    Args:
        result: the validation result.
        per_molecule: yield each molecule's checks; a stage measured over the whole set
            (accuracy, oracle) yields its own checks in their place.
        per_stage: also yield each stage's worst-over-molecules checks (``molecule`` ``None``).
    """
    names = [*PROTOCOL_ORDER, *(s for s in result.stages if s not in PROTOCOL_ORDER)]
    for name in names:
        stage = result.stages.get(name)
        mols = _stage_molecules(result, name)
        if per_molecule:
            for mol, checks in mols:
                for c in checks:
                    yield PlacedCheck(stage=name, molecule=mol, check=c)
        stage_checks: list[CheckResult] = list(stage.checks) if stage is not None else []
        if name == "accuracy" and result.accuracy is not None:
            stage_checks = list(result.accuracy.checks)
        if per_stage or (per_molecule and not mols):
            for c in stage_checks:
                yield PlacedCheck(stage=name, molecule=None, check=c)
