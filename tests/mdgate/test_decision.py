"""The decision layer on results built in code (no servers, no MD): which results a person
reviews (within the margin of a bound), the champion comparison per check, what the reason and
the report say about the baseline, and the final settle into a status and a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from markdown_it import MarkdownIt

from mdgate.checks.decision import (
    PENDING_REVIEW,
    BaselineFigures,
    ChampionRule,
    borderline_checks,
    compare,
    figures,
    judge,
    review_reason,
    settle,
    unpublished_reason,
)
from mdgate.report.markdown import write_report
from mdgate.results import (
    REMEASURED,
    STORED,
    AccuracyResult,
    CheckResult,
    FailedCheck,
    ModelInfo,
    MoleculeResult,
    ReplicaResult,
    StageResult,
    ValidationResult,
    Verdict,
)


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


RULES = {"min_force_r2": ChampionRule(max_absolute_change=0.005),
         "drift_slope_meV_per_atom_per_ps": ChampionRule(max_relative_change=2.0)}


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
    assert review_reason(result(0.93, 0.1), None) is None
    assert review_reason(result(0.99, 0.1), 0.05) is None
    assert (review_reason(result(0.93, 0.1), 0.05) or "").startswith("awaiting review: passes within 0.05")
    assert (review_reason(result(0.99, 0.1, Verdict.ERROR), 0.05) or "").startswith("awaiting review: Error")
    assert review_reason(result(0.5, 0.1, Verdict.REJECTED), 0.05) is None


def test_champion_comparison_per_check_direction() -> None:
    champion = result(0.995, 0.1)
    ok = compare(result(0.991, 0.29), champion, RULES)
    assert [(c.check, c.worse) for c in ok] == [("drift_slope_meV_per_atom_per_ps", False), ("min_force_r2", False)]
    worse = {c.check: c for c in compare(result(0.97, 0.31), champion, RULES)}
    assert worse["min_force_r2"].worse and abs(worse["min_force_r2"].allowed - 0.99) < 1e-9
    assert worse["drift_slope_meV_per_atom_per_ps"].worse  # above 3x the champion's 0.1
    assert "vs 0.995" in worse["min_force_r2"].line()
    # better than the champion is never worse; checks without a rule are not compared
    assert not any(c.worse for c in compare(result(0.999, 0.01), champion, RULES))
    assert compare(result(0.5, 9.0), champion, {}) == []


def test_figures_are_the_nve_molecules_each_stages_worst_and_accuracy() -> None:
    r = result(0.99, 0.1)
    stress_mol = r.molecules[0].model_copy(update={"stage": "stress", "checks": [check("max_temperature_K", 900.0,
                                                                                         1000.0)]})
    r.stages["stress"] = StageResult(stage="stress", ran=True, required=True, molecules=[stress_mol],
                                     checks=[check("max_temperature_K", 900.0, 1000.0)])
    # a stress molecule counts through its stage's worst value, in protocol order
    assert list(figures(r)) == [("nve/ethanol", "drift_slope_meV_per_atom_per_ps"),
                                ("nve/ethanol", "max_temperature_K"), ("accuracy", "min_force_r2"),
                                ("stress", "max_temperature_K")]


def test_judge_names_the_baseline_and_where_its_figures_come_from() -> None:
    first, section = judge(result(0.97, 0.31), BaselineFigures("champion", None), RULES)
    assert first.verdict == Verdict.APPROVED and first.reason.endswith("; no champion to compare with "
                                                                       "(first approved version)")
    assert section.label is None
    _, section = judge(result(0.97, 0.31), BaselineFigures("parent", None), RULES)
    assert section.note == "no parent to compare with"
    rejected, section = judge(result(0.97, 0.31), BaselineFigures(
        "champion", "v1", result(0.995, 0.1), REMEASURED, "its own were judged under other criteria"), RULES)
    assert rejected.verdict == Verdict.REJECTED and rejected.decided_by == "champion/drift_slope_meV_per_atom_per_ps"
    assert rejected.reason.startswith("worse than the champion v1: nve/ethanol: drift_slope_meV_per_atom_per_ps")
    assert rejected.reason.endswith("(champion's figures re-measured by this gate under the current criteria, "
                                    "its own were judged under other criteria)")
    assert rejected.failed_checks[0].startswith("champion/nve/ethanol: drift_slope")
    assert section.title == "champion v1" and section.origin == REMEASURED and len(section.comparisons) == 2
    approved, _ = judge(result(0.994, 0.12), BaselineFigures("champion", "v1", result(0.995, 0.1), STORED), RULES)
    assert approved.verdict == Verdict.APPROVED
    assert approved.reason.endswith("; no worse than the champion v1 (2 figures compared; stored figures)")
    # figures that could not be obtained are stated, never a silent pass
    stated, section = judge(result(0.97, 0.31), BaselineFigures(
        "champion", "v1", None, REMEASURED, "it has no stored results.json, and running it failed (model file "
                                            "missing)"), RULES)
    assert stated.verdict == Verdict.APPROVED
    assert "champion v1 not compared: it has no stored results.json" in stated.reason
    assert section.comparisons == []


def test_settle_applies_the_comparison_then_the_review_rule() -> None:
    champion = BaselineFigures("champion", "v1", result(0.995, 0.1), STORED)
    plain = settle(result(0.99, 0.1))
    assert (plain.status, plain.reason, plain.comparison) == ("Approved", "all checks passed", None)
    worse = settle(result(0.97, 0.31), baseline=champion, rules=RULES, review_margin=1.0)
    assert worse.status == "Rejected" and worse.review is None and worse.comparison is not None
    assert worse.reason.startswith("worse than the champion v1")
    near = settle(result(0.93, 0.1), baseline=champion, rules={}, review_margin=0.05)
    assert near.status == PENDING_REVIEW and near.result.verdict == Verdict.APPROVED
    assert near.reason.startswith("awaiting review: passes within 0.05") and near.comparison is not None
    # a rejection is not compared again, an Error waits for a person only with review on
    rejected = settle(result(0.5, 0.1, Verdict.REJECTED), baseline=champion, rules=RULES, review_margin=0.05)
    assert rejected.status == "Rejected" and rejected.comparison is None
    assert settle(result(0.99, 0.1, Verdict.ERROR)).status == "Error"
    assert settle(result(0.99, 0.1, Verdict.ERROR), review_margin=0.05).reason == ("awaiting review: Error: all "
                                                                                   "checks passed")


def test_a_verdict_without_its_report_becomes_an_error_saying_so() -> None:
    assert unpublished_reason(result(0.99, 0.1), "[Errno 28] No space left", stored=False) == (
        "the gate host cannot write the report ([Errno 28] No space left); the Approved verdict is not published "
        "without it")
    assert unpublished_reason(result(0.99, 0.1, Verdict.ERROR), "[Errno 28] x", stored=False) == (
        "all checks passed; the report could not be written either ([Errno 28] x)")
    assert unpublished_reason(result(0.5, 0.1, Verdict.REJECTED), "bucket full", stored=True) == (
        "the report could not be stored in MLflow's artifact store (bucket full); the Rejected verdict is not "
        "published without it")


def with_series(r: ValidationResult, slope: float) -> ValidationResult:
    t = [0.0, 0.01, 0.02, 0.03]
    rep = ReplicaResult(replica=0, steps_done=60, metrics={}, checks=[], series={
        "time_ps": t, "e_tot_minus_e0_meV_per_atom": [slope * x for x in t], "temperature_K": [300.0] * 4})
    r.molecules[0].replicas = [rep]
    return r


def test_report_shows_candidate_and_baseline_side_by_side(tmp_path: Path) -> None:
    rejected, section = judge(with_series(result(0.97, 0.31), 0.31), BaselineFigures(
        "champion", "v1", with_series(result(0.995, 0.1), 0.1), REMEASURED,
        "its own were judged under other criteria"), RULES)
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
    first, section = judge(with_series(result(0.97, 0.31), 0.31), BaselineFigures("champion", None), RULES)
    write_report(first, tmp_path / "first", section)
    md = (tmp_path / "first" / "report.md").read_text()
    assert "No champion to compare with (first approved version): the verdict rests on the absolute bounds" in md
    stored = json.loads((tmp_path / "first" / "results.json").read_text())["baseline"]
    assert stored["version"] is None and stored["figures"] == [] and "first approved version" in stored["note"]


def _undecided(policy: str, undecided: bool = True) -> ValidationResult:
    """A Rejected result whose one failure is a stress failure rate still undecided at the cap."""
    failure = FailedCheck(stage="stress", where="ethanol", check="max_bond_deviation_A", value=0.7, unit="Å",
                          bound=0.5, comparison="<=", n_failed=2, n_total=12, undecided=undecided,
                          rate="2/12 failed (failure rate 5–39 % at 90 %)")
    base = result(0.99, 0.1)
    return base.model_copy(update={"verdict": Verdict.REJECTED, "failures": [failure],
                                   "failed_checks": [failure.line()],
                                   "criteria": {"config": {"rates": {"undecided": policy}}}})


def test_an_undecided_failure_rate_goes_to_review_only_when_the_config_and_the_gate_say_so() -> None:
    line = _undecided("review").failures[0].line()
    assert "2/12 failed (failure rate 5–39 % at 90 %); undecided at the replica cap" in line
    decision = settle(_undecided("review"), review_margin=0.1)
    assert decision.status == PENDING_REVIEW
    assert decision.review is not None and "failure rate undecided at the replica cap" in decision.review
    assert "stress/ethanol: 2/12 failed" in decision.review
    # review off in the gate, the config's reject, or a decided failure: the rejection stands
    assert settle(_undecided("review"), review_margin=None).status == "Rejected"
    assert settle(_undecided("reject"), review_margin=0.1).status == "Rejected"
    assert settle(_undecided("review", undecided=False), review_margin=0.1).status == "Rejected"
