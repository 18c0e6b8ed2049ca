"""Champion comparison: a candidate that passes every bound must also be no worse than its
baseline (the version holding ``approved`` when it is gated, or its parent) by more than
``MDGATE_CHAMPION`` allows per check, as MLflow's ``MetricThreshold`` does against a baseline model.

The baseline's figures come from its own stored ``results.json`` when it was judged under the same
criteria (same sha256). Otherwise (other criteria, or no stored results) the gate runs the baseline
itself on the candidate's molecules and seeds under the current criteria, as it ran the candidate,
and compares with those figures; the reason and the report say which. No baseline is stated in the
reason, never a silent pass. Figures are compared where both results have them: each molecule's
checks, each stage's (worst) checks and the accuracy checks, by the same place and name.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from flows.dask_tasks import DaskUnavailableError
from flows.gate import REGISTRY_TASK, fetch_candidate, registry_for, run_measurement
from flows.settings import ChampionRule, Settings
from mdgate.config import GateConfig
from mdgate.errors import MdgateError
from mdgate.report.champion import REMEASURED, STORED, BaselineComparison, Comparison
from mdgate.results import CheckResult, FailedCheck, ValidationResult, Verdict
from registry.errors import LeaseLostError, TransientRegistryError
from registry.types import Claim, VersionInfo

__all__ = ["BaselineComparison", "Comparison", "champion_comparison", "compare", "judge"]


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
        out.append(Comparison(where=key[0], check=c.name, candidate=c.value, baseline=b.value, unit=c.unit,
                              comparison=c.comparison, allowed=allowed, worse=worse))
    return out


def find_baseline(settings: Settings, name: str, version: str) -> VersionInfo | None:
    """The baseline version of a candidate (``settings.champion_baseline``), or ``None``."""
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


@task(name="find-baseline", **REGISTRY_TASK)
def find_baseline_task(settings: Settings, name: str, version: str) -> VersionInfo | None:
    """The candidate's baseline version (``find_baseline``)."""
    return find_baseline(settings, name, version)


@task(name="baseline-stored-results", **REGISTRY_TASK)
def stored_figures(settings: Settings, baseline: VersionInfo, criteria_sha256: str,
                   work: Path) -> tuple[ValidationResult | None, str]:
    """The baseline's stored ``results.json`` when it was judged under these criteria, else
    ``None`` and why its figures cannot be used.
    """
    from registry.artifacts import stored_result

    if baseline.criteria_sha256 != criteria_sha256:
        why = "its own were judged under other criteria" if baseline.criteria_sha256 else "it has no criteria hash"
        return None, why
    stored = stored_result(registry_for(settings), baseline, work / "baseline-stored")
    if stored is None:
        return None, "it has no stored results.json"
    return stored, ""


def measure_baseline(settings: Settings, claim: Claim, baseline: VersionInfo, config: GateConfig, work: Path,
                     key: str) -> ValidationResult:
    """Run the baseline model through the same pipeline as the candidate, with the candidate's
    config as applied (its molecules, reference set and seeds), under the gate's lease.

    Raises:
        MdgateError: the baseline cannot be loaded or run.
        TransientRegistryError: the registry did not answer (the gate is retried as a whole).
    """
    model = fetch_candidate(settings, baseline.name, baseline.version, work / "baseline")
    return run_measurement(settings, claim, model, config, work / "baseline", f"{key}-baseline",
                           f"{baseline.name} v{baseline.version}", md_prefix="baseline-md")


def judge(settings: Settings, name: str, result: ValidationResult, baseline: VersionInfo | None,
          figures_of_baseline: ValidationResult | None, origin: str = STORED,
          origin_note: str = "") -> tuple[ValidationResult, BaselineComparison]:
    """Apply the champion comparison to an Approved ``result``: Rejected when worse than the
    baseline's figures, else Approved with the comparison (or why there is none) in the reason.

    Args:
        settings: the gate settings (``champion`` rules, ``champion_baseline``).
        name: the candidate's registered model name.
        result: the candidate's Approved result.
        baseline: the baseline version, ``None`` when there is none.
        figures_of_baseline: the baseline's result (stored or re-measured), ``None`` when none
            could be obtained.
        origin: ``stored`` or ``re-measured``.
        origin_note: why the figures were re-measured, or why there are none.

    Returns:
        The result, and what the report says about the comparison.
    """
    which = "parent" if settings.champion_baseline == "parent" else "champion"

    def noted(note: str, section: BaselineComparison) -> tuple[ValidationResult, BaselineComparison]:
        return result.model_copy(update={"reason": f"{result.reason}; {note}"}), section

    if baseline is None:
        note = (f"no {which} to compare with (first approved version)" if which == "champion"
                else "no parent to compare with")
        return noted(note, BaselineComparison(which, None, note))
    ref = f"{baseline.name} v{baseline.version}" if baseline.name != name else f"v{baseline.version}"
    if figures_of_baseline is None:
        note = f"{which} {ref} not compared: {origin_note}"
        return noted(note, BaselineComparison(which, ref, note, "", origin_note))
    source = ("stored figures" if origin == STORED
              else "figures re-measured by this gate under the current criteria"
              + (f", {origin_note}" if origin_note else ""))
    comparisons = compare(result, figures_of_baseline, settings.champion)
    worse = [c for c in comparisons if c.worse]
    section = BaselineComparison(which, ref, "", origin, origin_note, comparisons, figures_of_baseline)
    if not comparisons:
        section.note = f"{which} {ref} shares no compared figure with the candidate: not compared ({source})"
        return noted(section.note, section)
    if not worse:
        section.note = f"no worse than the {which} {ref} ({len(comparisons)} figures compared; {source})"
        return noted(section.note, section)
    reason = f"worse than the {which} {ref}: " + "; ".join(c.line() for c in worse[:4])
    if len(worse) > 4:
        reason += f"; and {len(worse) - 4} more"
    reason += f" ({which}'s {source})"
    section.note = reason
    failures = [FailedCheck(stage=which, where=c.where, check=c.check, value=c.candidate, unit=c.unit,
                            bound=c.allowed, comparison=c.comparison) for c in worse]
    return result.model_copy(update={
        "verdict": Verdict.REJECTED, "reason": reason, "failures": failures + list(result.failures),
        "failed_checks": [f.line() for f in failures] + list(result.failed_checks),
        "decided_by": f"{which}/{worse[0].check}",
    }), section


def champion_comparison(settings: Settings, claim: Claim, result: ValidationResult, criteria_sha256: str,
                        config: GateConfig, work: Path, key: str) -> tuple[ValidationResult, BaselineComparison]:
    """Find the candidate's baseline, obtain its figures (stored, else re-measured on the
    candidate's molecules and seeds) and judge the candidate against them.

    Args:
        settings: the gate settings.
        claim: the candidate's claim (its lease is renewed while the baseline runs).
        result: the candidate's Approved result.
        criteria_sha256: the gate criteria's hash (the baseline's stored figures must match it).
        config: the candidate's config as applied (molecules, reference, seeds).
        work: the gate's work folder.
        key: the gate's artifact key prefix.

    Raises:
        TransientRegistryError: the registry did not answer.
    """
    baseline = find_baseline_task(settings, claim.name, claim.version)
    if baseline is None:
        return judge(settings, claim.name, result, None, None)
    stored, why = stored_figures(settings, baseline, criteria_sha256, work)
    if stored is not None:
        return judge(settings, claim.name, result, baseline, stored, STORED)
    logger = get_run_logger()
    logger.info("baseline %s: %s; running it on the candidate's molecules and seeds", baseline.ref, why)
    try:
        measured = measure_baseline(settings, claim, baseline, config, work, key)
    except (TransientRegistryError, LeaseLostError, DaskUnavailableError):
        raise
    except MdgateError as e:
        failed = str(e)
    except Exception as e:  # a bug in the baseline's run must not leave the candidate Running
        logger.error("baseline run failed: %s", traceback.format_exc())
        failed = f"internal error: {type(e).__name__}: {e}"
    else:
        if measured.verdict != Verdict.ERROR:
            return judge(settings, claim.name, result, baseline, measured, REMEASURED, why)
        failed = f"Error: {measured.reason}"
    return judge(settings, claim.name, result, baseline, None, REMEASURED, f"{why}, and running it failed ({failed})")


def comparison_rows(section: BaselineComparison) -> list[dict[str, Any]]:
    """Candidate and baseline side by side (a Prefect table artifact)."""
    label = section.label or "baseline"
    return [{"where": c.where, "check": c.check, "candidate": float(f"{c.candidate:.4g}"),
             label: float(f"{c.baseline:.4g}"), "allowed": f"{c.comparison} {c.allowed:.4g}",
             "result": "WORSE" if c.worse else "ok"} for c in section.comparisons]
