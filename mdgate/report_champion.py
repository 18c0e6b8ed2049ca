"""The comparison of a candidate with its baseline, as plain data for the report.

The comparison itself is made above the engine (``flows/champion.py``, which knows the
registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdgate.results import ValidationResult


@dataclass
class Comparison:
    """One compared figure of the candidate and its baseline."""

    where: str
    """Where the figure was measured: ``<stage>/<molecule>``, a stage, or ``accuracy``."""
    check: str
    candidate: float
    baseline: float
    unit: str
    comparison: str
    """The check's bound direction: ``<=`` (higher is worse) or ``>=`` (lower is worse)."""
    allowed: float
    """The worst value the candidate may have (the baseline's, moved by the rule's limits)."""
    worse: bool

    def line(self) -> str:
        """One line for the reason and the report."""
        return (f"{self.where}: {self.check} = {self.candidate:.4g} vs {self.baseline:.4g} {self.unit}".rstrip()
                + f" (allowed {self.comparison} {self.allowed:.4g})")


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

    @property
    def title(self) -> str:
        """``champion v3`` / ``parent other-model v3``."""
        return f"{self.role} {self.label}" if self.label else self.role
