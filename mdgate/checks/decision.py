"""The decision layer: how a measured result becomes the status a version is published with.

Pure functions over results (no registry, no orchestrator). The verdict on the absolute bounds is
:func:`mdgate.checks.verdict.decide`; what may change it afterwards is settled here, once:

- the champion comparison (:func:`compare`, :func:`judge`): an Approved candidate worse than its
  baseline (the champion or the parent) by more than a :class:`ChampionRule` allows is Rejected,
  naming the baseline, as MLflow's ``MetricThreshold`` does against a baseline model; no baseline,
  or no figures of it, is stated in the reason, never a silent pass;
- the review rule (:func:`near_bound`, :func:`borderline_checks`, :func:`review_reason`): with
  review on, an Error, or an Approved result with a required check within the margin of its
  bound, waits for a person (``PendingReview``);
- the final settle (:func:`settle`): result + comparison + review rule → :class:`Decision`
  (status and reason); :func:`unpublished_reason` says why a verdict that cannot be published
  with its report becomes an Error (settled again).

Figures are walked with :func:`mdgate.results.iter_checks` (protocol order, with their place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mdgate.results import (
    STORED,
    BaselineComparison,
    CheckResult,
    ComparedFigure,
    FailedCheck,
    ValidationResult,
    Verdict,
    iter_checks,
)

#: The status of a result a person must decide (``mdgate.status`` = ``PendingReview``).
PENDING_REVIEW = "PendingReview"
#: At most this many worse figures, or borderline checks, are named in a reason; the rest are counted.
MAX_WORSE_NAMED = 4
MAX_BORDERLINE_NAMED = 5


class ChampionRule(BaseModel):
    """How much worse than the baseline a check's value may be (as MLflow's ``MetricThreshold``):
    worse by more than either limit given fails. "Worse" follows the check's direction (higher for
    a ``<=`` bound, lower for a ``>=`` bound).
    """

    model_config = ConfigDict(extra="forbid")

    max_absolute_change: Annotated[float, Field(ge=0)] | None = None
    max_relative_change: Annotated[float, Field(ge=0)] | None = None
    """Relative to the baseline's |value| (2.0: at most 3× the champion's drift)."""


@dataclass(frozen=True)
class BaselineFigures:
    """What the layer above found out about the candidate's baseline."""

    role: Literal["champion", "parent"]
    """``champion`` (the version holding ``approved``) or ``parent`` (``mdgate.parent``)."""
    label: str | None
    """The baseline as the reason names it (``v3``, or ``other-model v3``); ``None``: there is none."""
    result: ValidationResult | None = None
    """Its figures (stored or re-measured); ``None`` when none could be obtained."""
    origin: str = STORED
    """``stored`` or ``re-measured`` (:mod:`mdgate.report.champion`)."""
    origin_note: str = ""
    """Why the figures were re-measured, or why there are none."""


@dataclass(frozen=True)
class Decision:
    """How a result is published: its (final) verdict, and whether a person must decide it."""

    result: ValidationResult
    """The result as published (the champion comparison applied)."""
    comparison: BaselineComparison | None = None
    """What the report says about the baseline; ``None``: no comparison was asked for."""
    review: str | None = None
    """Why a person must decide (``mdgate.reason`` of the PendingReview); ``None``: the verdict stands."""

    @property
    def status(self) -> str:
        """``Approved``, ``Rejected``, ``Error`` or ``PendingReview``."""
        return PENDING_REVIEW if self.review else self.result.verdict.value

    @property
    def reason(self) -> str:
        """The one line that goes with the status."""
        return self.review or self.result.reason


# ----------------------------------------------------------------------------- champion


def figures(result: ValidationResult) -> dict[tuple[str, str], CheckResult]:
    """Every check of a result with a value, by (place, name): each NVE molecule's checks, each
    stage's worst checks and the accuracy checks, in protocol order (the first of a place wins).
    """
    out: dict[tuple[str, str], CheckResult] = {}
    for pc in iter_checks(result, per_stage=True):
        # Molecules of the other stages are not compared: their stage's worst value is.
        if pc.molecule is not None and pc.stage != "nve":
            continue
        if pc.check.value is not None:
            out.setdefault((pc.where, pc.check.name), pc.check)
    return out


def allowed_value(baseline: float, rule: ChampionRule, lower_is_worse: bool) -> float:
    """The worst value the candidate may have: the baseline's moved by the tightest limit."""
    limits = [x for x in (rule.max_absolute_change,
                          None if rule.max_relative_change is None else rule.max_relative_change * abs(baseline))
              if x is not None]
    step = min(limits) if limits else 0.0
    return baseline - step if lower_is_worse else baseline + step


def compare(candidate: ValidationResult, baseline: ValidationResult,
            rules: dict[str, ChampionRule]) -> list[ComparedFigure]:
    """The figures of ``candidate`` under a rule, against ``baseline``'s (where both have them)."""
    base = figures(baseline)
    out = []
    for key, c in figures(candidate).items():
        rule = rules.get(c.name)
        b = base.get(key)
        if rule is None or b is None or c.value is None or b.value is None:
            continue
        lower_is_worse = c.comparison == ">="
        allowed = allowed_value(b.value, rule, lower_is_worse)
        worse = c.value < allowed if lower_is_worse else c.value > allowed
        out.append(ComparedFigure(where=key[0], check=c.name, candidate=c.value, baseline=b.value, unit=c.unit,
                                  comparison=c.comparison, allowed=allowed, worse=worse))
    return out


def _noted(result: ValidationResult, note: str) -> ValidationResult:
    return result.model_copy(update={"reason": f"{result.reason}; {note}"})


def judge(result: ValidationResult, baseline: BaselineFigures,
          rules: dict[str, ChampionRule]) -> tuple[ValidationResult, BaselineComparison]:
    """Apply the champion comparison to an Approved ``result``: Rejected when worse than the
    baseline's figures, else Approved with the comparison (or why there is none) in the reason.

    Returns:
        The result, and what the report says about the comparison.
    """
    role, ref = baseline.role, baseline.label
    if ref is None:
        note = (f"no {role} to compare with (first approved version)" if role == "champion"
                else f"no {role} to compare with")
        return _noted(result, note), BaselineComparison(role, None, note)
    if baseline.result is None:
        note = f"{role} {ref} not compared: {baseline.origin_note}"
        return _noted(result, note), BaselineComparison(role, ref, note, "", baseline.origin_note)
    source = ("stored figures" if baseline.origin == STORED
              else "figures re-measured by this gate under the current criteria"
              + (f", {baseline.origin_note}" if baseline.origin_note else ""))
    comparisons = compare(result, baseline.result, rules)
    section = BaselineComparison(role, ref, "", baseline.origin, baseline.origin_note, comparisons, baseline.result)
    worse = [c for c in comparisons if c.worse]
    if not comparisons:
        section.note = f"{role} {ref} shares no compared figure with the candidate: not compared ({source})"
        return _noted(result, section.note), section
    if not worse:
        section.note = f"no worse than the {role} {ref} ({len(comparisons)} figures compared; {source})"
        return _noted(result, section.note), section
    n = MAX_WORSE_NAMED
    section.note = (f"worse than the {role} {ref}: " + "; ".join(c.line() for c in worse[:n])
                    + (f"; and {len(worse) - n} more" if len(worse) > n else "") + f" ({role}'s {source})")
    failures = [FailedCheck(stage=role, where=c.where, check=c.check, value=c.candidate, unit=c.unit,
                            bound=c.allowed, comparison=c.comparison) for c in worse]
    return result.model_copy(update={
        "verdict": Verdict.REJECTED, "reason": section.note, "failures": failures + list(result.failures),
        "failed_checks": [f.line() for f in failures] + list(result.failed_checks),
        "decided_by": f"{role}/{worse[0].check}",
    }), section


# ----------------------------------------------------------------------------- review


def near_bound(check: CheckResult, margin: float) -> bool:
    """A required check that passed with ``|value - bound| <= margin * |bound|``."""
    if not check.required or check.passed is not True or check.value is None or check.bound is None:
        return False
    if not (math.isfinite(check.value) and math.isfinite(check.bound)):
        return False
    return abs(check.value - check.bound) <= margin * abs(check.bound)


def borderline_checks(result: ValidationResult, margin: float) -> list[str]:
    """The required checks of ``result`` that pass within ``margin`` of their bound, one line
    each (NVE molecules' checks, each stage's worst checks, accuracy checks), without repeats.
    """
    lines: list[str] = []
    for pc in iter_checks(result, per_stage=True):
        c = pc.check
        # As in the champion comparison: other stages' molecules count through their stage's worst value.
        if (pc.molecule is not None and pc.stage != "nve") or not near_bound(c, margin):
            continue
        line = f"{pc.where}: {c.name} = {c.value:.4g} (bound {c.comparison} {c.bound:.4g})"
        if line not in lines:
            lines.append(line)
    return lines


def undecided_for_review(result: ValidationResult) -> list[str]:
    """The failures of a Rejected result when every one is a failure rate still undecided at the
    replica cap and the config sends those to review (``rates.undecided: review``), else ``[]``.
    """
    rates = result.criteria.get("config", {}).get("rates", {})
    if result.verdict != Verdict.REJECTED or rates.get("undecided") != "review" or not result.failures:
        return []
    if not all(f.undecided for f in result.failures):
        return []
    return list(dict.fromkeys(f"{f.stage}/{f.where}: {f.rate}" for f in result.failures))


def review_reason(result: ValidationResult, margin: float | None) -> str | None:
    """Why a person must decide ``result``, or ``None``; ``margin`` ``None``: review is off."""
    if margin is None:
        return None
    if result.verdict == Verdict.ERROR:
        return f"awaiting review: Error: {result.reason}"
    if (undecided := undecided_for_review(result)):
        return "awaiting review: failure rate undecided at the replica cap: " + "; ".join(undecided)
    if result.verdict != Verdict.APPROVED:
        return None
    near = borderline_checks(result, margin)
    if not near:
        return None
    n = MAX_BORDERLINE_NAMED
    return (f"awaiting review: passes within {margin:g} (relative) of a bound: "
            + "; ".join(near[:n]) + (f"; and {len(near) - n} more" if len(near) > n else ""))


# ----------------------------------------------------------------------------- settle


def settle(result: ValidationResult, *, baseline: BaselineFigures | None = None,
           rules: dict[str, ChampionRule] | None = None, review_margin: float | None = None) -> Decision:
    """The final status and reason of a result.

    Args:
        result: the decided result (:func:`mdgate.checks.verdict.decide`), or an Error.
        baseline: the baseline's figures, when a comparison was asked for (only an Approved
            result is compared).
        rules: the champion rules, by check name.
        review_margin: the relative margin of a borderline result; ``None``: review is off.
    """
    comparison = None
    if baseline is not None and result.verdict == Verdict.APPROVED:
        result, comparison = judge(result, baseline, rules or {})
    return Decision(result, comparison, review_reason(result, review_margin))


def unpublished_reason(result: ValidationResult, cause: str, stored: bool) -> str:
    """The reason of the Error a result becomes when its report cannot be kept: written on the gate
    host (``stored`` False) or stored in MLflow's artifact store (``stored`` True). A verdict is
    never published without its report.
    """
    if stored:
        return (f"the report could not be stored in MLflow's artifact store ({cause}); the "
                f"{result.verdict.value} verdict is not published without it")
    if result.verdict == Verdict.ERROR:
        return f"{result.reason}; the report could not be written either ({cause})"
    return (f"the gate host cannot write the report ({cause}); the {result.verdict.value} verdict is not "
            "published without it")
