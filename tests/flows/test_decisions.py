"""The gate's decision rules on results built in code (no servers, no MD): which results a
person reviews (within the margin of a bound), the champion comparison per check, what the reason
and the report say about the baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

from markdown_it import MarkdownIt

from flows.champion import compare, judge
from flows.review import borderline_checks, review_reason
from flows.settings import ChampionRule, load_settings
from mdgate.report.champion import REMEASURED, STORED
from mdgate.report.markdown import write_report
from mdgate.results import (
    AccuracyResult,
    CheckResult,
    ModelInfo,
    MoleculeResult,
    ReplicaResult,
    ValidationResult,
    Verdict,
)
from registry.types import VersionInfo


def check(name: str, value: float, bound: float, comparison: str = "<=", required: bool = True) -> CheckResult:
    passed = value <= bound if comparison == "<=" else value >= bound
    return CheckResult(name=name, value=value, unit="u", bound=bound, comparison=comparison, passed=passed,
                       required=required)


def result(r2: float, drift: float, verdict: Verdict = Verdict.APPROVED) -> ValidationResult:
    mol = MoleculeResult(name="ethanol", formula="C2H6O", n_atoms=9, steps_asked=60, passed=True, summary={},
                         checks=[check("drift_slope_meV_per_atom_per_ps", drift, 0.5),
                                 check("max_temperature_K", 400.0, 1000.0, required=False)], replicas=[])
    acc = AccuracyResult(applicable=True, reference_level_of_theory="x", model_level_of_theory="x",
                         checks=[check("min_force_r2", r2, 0.9, ">=")])
    return ValidationResult(verdict=verdict, reason="all checks passed", model=ModelInfo(source="t"), criteria={},
                            molecules=[mol], accuracy=acc)


def test_borderline_is_within_the_relative_margin_of_a_required_bound() -> None:
    assert borderline_checks(result(0.95, 0.1), 0.05) == []
    assert borderline_checks(result(0.93, 0.1), 0.05) == ["accuracy: min_force_r2 = 0.93 (bound >= 0.9)"]
    assert borderline_checks(result(0.99, 0.49), 0.05) == [
        "nve/ethanol: drift_slope_meV_per_atom_per_ps = 0.49 (bound <= 0.5)"]
    # an informational check near its bound, or a failed one, is not borderline
    assert borderline_checks(result(0.99, 0.1), 0.9) == ["nve/ethanol: drift_slope_meV_per_atom_per_ps = 0.1 "
                                                          "(bound <= 0.5)", "accuracy: min_force_r2 = 0.99 "
                                                          "(bound >= 0.9)"]
    assert borderline_checks(result(0.85, 0.1, Verdict.REJECTED), 0.1) == []


def test_review_reason_only_with_review_on() -> None:
    off, on = load_settings(review=False), load_settings(review=True, review_margin=0.05)
    assert review_reason(off, result(0.93, 0.1)) is None
    assert review_reason(on, result(0.99, 0.1)) is None
    assert review_reason(on, result(0.93, 0.1)).startswith("awaiting review: passes within 0.05")
    assert review_reason(on, result(0.99, 0.1, Verdict.ERROR)).startswith("awaiting review: Error")
    assert review_reason(on, result(0.5, 0.1, Verdict.REJECTED)) is None


def test_champion_comparison_per_check_direction() -> None:
    champion = result(0.995, 0.1)
    rules = {"min_force_r2": ChampionRule(max_absolute_change=0.005),
             "drift_slope_meV_per_atom_per_ps": ChampionRule(max_relative_change=2.0)}
    ok = compare(result(0.991, 0.29), champion, rules)
    assert [(c.check, c.worse) for c in ok] == [("drift_slope_meV_per_atom_per_ps", False), ("min_force_r2", False)]
    worse = {c.check: c for c in compare(result(0.97, 0.31), champion, rules)}
    assert worse["min_force_r2"].worse and abs(worse["min_force_r2"].allowed - 0.99) < 1e-9
    assert worse["drift_slope_meV_per_atom_per_ps"].worse  # above 3x the champion's 0.1
    assert "vs 0.995" in worse["min_force_r2"].line()
    # better than the champion is never worse; checks without a rule are not compared
    assert not any(c.worse for c in compare(result(0.999, 0.01), champion, rules))
    assert compare(result(0.5, 9.0), champion, {}) == []


RULES = {"min_force_r2": ChampionRule(max_absolute_change=0.005),
         "drift_slope_meV_per_atom_per_ps": ChampionRule(max_relative_change=2.0)}


def test_judge_names_the_baseline_and_where_its_figures_come_from() -> None:
    settings = load_settings(champion=RULES)
    v1 = VersionInfo(name="m", version="1", criteria_sha256="old")
    first, section = judge(settings, "m", result(0.97, 0.31), None, None)
    assert first.verdict == Verdict.APPROVED and first.reason.endswith("; no champion to compare with "
                                                                       "(first approved version)")
    assert section.label is None
    rejected, section = judge(settings, "m", result(0.97, 0.31), v1, result(0.995, 0.1), REMEASURED,
                              "its own were judged under other criteria")
    assert rejected.verdict == Verdict.REJECTED and rejected.decided_by == "champion/drift_slope_meV_per_atom_per_ps"
    assert rejected.reason.startswith("worse than the champion v1: nve/ethanol: drift_slope_meV_per_atom_per_ps")
    assert rejected.reason.endswith("(champion's figures re-measured by this gate under the current criteria, "
                                    "its own were judged under other criteria)")
    assert section.title == "champion v1" and section.origin == REMEASURED and len(section.comparisons) == 2
    approved, _ = judge(settings, "m", result(0.994, 0.12), v1, result(0.995, 0.1), STORED)
    assert approved.verdict == Verdict.APPROVED
    assert approved.reason.endswith("; no worse than the champion v1 (2 figures compared; stored figures)")
    # figures that could not be obtained are stated, never a silent pass
    stated, section = judge(settings, "m", result(0.97, 0.31), v1, None, REMEASURED,
                            "it has no stored results.json, and running it failed (model file missing)")
    assert stated.verdict == Verdict.APPROVED
    assert "champion v1 not compared: it has no stored results.json" in stated.reason
    assert section.comparisons == []


def with_series(r: ValidationResult, slope: float) -> ValidationResult:
    t = [0.0, 0.01, 0.02, 0.03]
    rep = ReplicaResult(replica=0, steps_done=60, metrics={}, checks=[], series={
        "time_ps": t, "e_tot_minus_e0_meV_per_atom": [slope * x for x in t], "temperature_K": [300.0] * 4})
    r.molecules[0].replicas = [rep]
    return r


def test_report_shows_candidate_and_baseline_side_by_side(tmp_path: Path) -> None:
    settings = load_settings(champion=RULES)
    v1 = VersionInfo(name="m", version="1")
    rejected, section = judge(settings, "m", with_series(result(0.97, 0.31), 0.31), v1,
                              with_series(result(0.995, 0.1), 0.1), REMEASURED,
                              "its own were judged under other criteria")
    files = write_report(rejected, tmp_path, section)
    md = (tmp_path / "report.md").read_text()
    assert "## Comparison with the champion" in md
    assert "**Baseline**: champion v1; its figures were re-measured by this gate" in md
    assert "| Check | Place | Candidate | Baseline (v1) | Allowed | Worse? |" in md
    assert "| min_force_r2 | accuracy | 0.97 u | 0.995 u | >= 0.99 | **WORSE** |" in md
    assert "![Energy drift of ethanol: candidate vs champion v1](plots/baseline_ethanol.png)" in md
    assert (tmp_path / "plots" / "baseline_ethanol.png").stat().st_size > 1000
    assert "baseline_results.json" in files
    tables = [t for t in MarkdownIt("commonmark").enable("table").parse(md) if t.type == "table_open"]
    assert len(tables) >= 3
    stored = json.loads((tmp_path / "results.json").read_text())["baseline"]
    assert stored["role"] == "champion" and stored["version"] == "v1" and stored["origin"] == REMEASURED
    assert [(f["where"], f["check"], f["candidate"], f["baseline"], f["worse"]) for f in stored["figures"]] == [
        ("nve/ethanol", "drift_slope_meV_per_atom_per_ps", 0.31, 0.1, True),
        ("accuracy", "min_force_r2", 0.97, 0.995, True)]
    # no baseline: the section says so
    first, section = judge(settings, "m", with_series(result(0.97, 0.31), 0.31), None, None)
    write_report(first, tmp_path / "first", section)
    md = (tmp_path / "first" / "report.md").read_text()
    assert "No champion to compare with (first approved version): the verdict rests on the absolute bounds" in md
    stored = json.loads((tmp_path / "first" / "results.json").read_text())["baseline"]
    assert stored["version"] is None and stored["figures"] == [] and "first approved version" in stored["note"]
