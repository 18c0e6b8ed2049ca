"""The measured outcome of a validation: what ``results.json`` holds (a contract)."""

from __future__ import annotations

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
    """Where a trajectory stopped early."""

    check: str
    step: int
    time_ps: float
    value: float | None


class ReplicaResult(BaseModel):
    """One trajectory (molecule × replica)."""

    replica: int
    steps_done: int
    failure: FailureInfo | None = None
    metrics: dict[str, float | None]
    checks: list[CheckResult]
    series: dict[str, list[float]] = Field(default_factory=dict)
    """Time series for plots (``time_ps``, ``e_tot_minus_e0_meV_per_atom``, ``temperature_K``)."""


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


class ValidationResult(BaseModel):
    """Everything a validation measured and decided (serialised as ``results.json``)."""

    verdict: Verdict
    reason: str
    model: ModelInfo
    criteria: dict[str, Any]
    molecules: list[MoleculeResult] = Field(default_factory=list)
    accuracy: AccuracyResult | None = None
    failed_checks: list[str] = Field(default_factory=list)
    timing: Timing = Field(default_factory=Timing)
    created_at: str = ""
    mdgate_version: str = ""
