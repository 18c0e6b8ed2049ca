"""Champion comparison: a candidate that passes every bound must also be no worse than its
baseline (the version holding ``approved`` when it is gated, or its parent) by more than
``MDGATE_CHAMPION`` allows per check, as MLflow's ``MetricThreshold`` does against a baseline model.

The baseline's figures come from its own stored ``results.json`` when it was judged under the same
criteria (same sha256); otherwise, and when there is no baseline, no comparison is made and the
reason says so (never a silent pass). Figures are compared where both results have them: each
molecule's checks, each stage's (worst) checks and the accuracy checks, by the same place and name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.settings import ChampionRule, Settings
from mdgate.results import CheckResult, FailedCheck, ValidationResult, Verdict
from registry.types import VersionInfo


@dataclass
class Comparison:
    """One compared figure."""

    where: str
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


def figures(result: ValidationResult) -> dict[tuple[str, str], CheckResult]:
    """Every check of a result with a value, by (place, name)."""
    out: dict[tuple[str, str], CheckResult] = {}
    for mol in result.molecules:
        for c in mol.checks:
            out[(f"{mol.stage}/{mol.name}", c.name)] = c
    for name, stage in result.stages.items():
        for c in stage.checks:
            out.setdefault((name, c.name), c)
    if result.accuracy is not None:
        for c in result.accuracy.checks:
            out[("accuracy", c.name)] = c
    return {k: c for k, c in out.items() if c.value is not None}


def allowed_value(baseline: float, rule: ChampionRule, lower_is_worse: bool) -> float:
    """The worst value the candidate may have: the baseline's moved by the tightest limit."""
    limits = [x for x in (rule.max_absolute_change,
                          None if rule.max_relative_change is None else rule.max_relative_change * abs(baseline))
              if x is not None]
    step = min(limits) if limits else 0.0
    return baseline - step if lower_is_worse else baseline + step


def compare(candidate: ValidationResult, baseline: ValidationResult,
            rules: dict[str, ChampionRule]) -> list[Comparison]:
    """The figures of ``candidate`` under a rule, against ``baseline``'s."""
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
        out.append(Comparison(key[0], c.name, c.value, b.value, c.unit, c.comparison, allowed, worse))
    return out


def find_baseline(settings: Settings, name: str, version: str) -> VersionInfo | None:
    """The baseline version of a candidate (``settings.champion_baseline``), or ``None``."""
    from flows.gate import registry_for
    from registry import types as T

    registry = registry_for(settings)
    if settings.champion_baseline == "parent":
        parent = registry.get_version(name, version).tags.get(T.PARENT, "")
        pname, _, pversion = parent.rpartition("/")
        return registry.get_version(pname, pversion) if pname and pversion else None
    holder = registry.alias_version(name)
    if holder is None or holder == str(version):
        return None
    return registry.get_version(name, holder)


def judge(settings: Settings, name: str, version: str, result: ValidationResult, criteria_sha256: str,
          work: Path) -> tuple[ValidationResult, list[Comparison], VersionInfo | None]:
    """Apply the champion comparison to an Approved ``result``: Rejected when worse than the
    baseline, else Approved with the comparison (or why there is none) in the reason.
    Returns (the result, the comparisons, the baseline).
    """
    from flows.gate import registry_for
    from registry.artifacts import stored_result

    if not settings.champion or result.verdict != Verdict.APPROVED:
        return result, [], None
    which = "parent" if settings.champion_baseline == "parent" else "champion"
    baseline = find_baseline(settings, name, version)
    if baseline is None:
        note = (f"no {which} to compare with (first approved version)" if which == "champion"
                else "no parent to compare with")
        return result.model_copy(update={"reason": f"{result.reason}; {note}"}), [], None
    ref = f"{baseline.name} v{baseline.version}" if baseline.name != name else f"v{baseline.version}"
    if baseline.criteria_sha256 != criteria_sha256:
        note = f"{which} {ref} was judged under other criteria: not compared (re-gate it to compare)"
        return result.model_copy(update={"reason": f"{result.reason}; {note}"}), [], baseline
    stored = stored_result(registry_for(settings), baseline, work / "baseline")
    if stored is None:
        note = f"{which} {ref} has no stored results.json: not compared"
        return result.model_copy(update={"reason": f"{result.reason}; {note}"}), [], baseline
    comparisons = compare(result, stored, settings.champion)
    worse = [c for c in comparisons if c.worse]
    if not comparisons:
        note = f"{which} {ref} shares no compared figure with the candidate: not compared"
        return result.model_copy(update={"reason": f"{result.reason}; {note}"}), [], baseline
    if not worse:
        note = f"no worse than the {which} {ref} ({len(comparisons)} figures compared)"
        return result.model_copy(update={"reason": f"{result.reason}; {note}"}), comparisons, baseline
    reason = f"worse than the {which} {ref}: " + "; ".join(c.line() for c in worse[:4])
    if len(worse) > 4:
        reason += f"; and {len(worse) - 4} more"
    failures = [FailedCheck(stage=which, where=c.where, check=c.check, value=c.candidate, unit=c.unit,
                            bound=c.allowed, comparison=c.comparison) for c in worse]
    return result.model_copy(update={
        "verdict": Verdict.REJECTED, "reason": reason, "failures": failures + list(result.failures),
        "failed_checks": [f.line() for f in failures] + list(result.failed_checks),
        "decided_by": f"{which}/{worse[0].check}",
    }), comparisons, baseline


def comparison_rows(comparisons: list[Comparison], baseline: VersionInfo | None) -> list[dict[str, object]]:
    """Candidate and baseline side by side (a Prefect table artifact)."""
    label = f"v{baseline.version}" if baseline else "baseline"
    return [{"where": c.where, "check": c.check, "candidate": float(f"{c.candidate:.4g}"),
             label: float(f"{c.baseline:.4g}"), "allowed": f"{c.comparison} {c.allowed:.4g}",
             "result": "WORSE" if c.worse else "ok"} for c in comparisons]
