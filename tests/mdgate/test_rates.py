"""Failure rates with confidence: the Wilson interval, the decision, its operating
characteristic, confirmation replicas through the MD stage, and held structural checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from mdgate.checks.evaluate import evaluate_trajectory
from mdgate.checks.rates import RateDecision, decide_rate, more_replicas, operating_characteristic, wilson_interval
from mdgate.config import GateConfig, RateSettings
from mdgate.md.batch import run_batch, run_nve
from mdgate.md.trajectory import StopLimits, nve_specs, sustained
from mdgate.molecules import Molecule
from mdgate.stages.md import run_md
from tests.models import MorsePairPotential, tetrahedron

MORSE = {"epsilon_eV": 0.5, "rho0": 4.0, "r0_A": 1.5}


def test_wilson_interval_matches_published_values() -> None:
    # 5/10 at 95 %: 0.2366–0.7634 (Newcombe 1998, Table I); 0/3 at 90 %: upper z²/(n+z²).
    assert wilson_interval(5, 10, 0.95) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    z2 = 1.6448536269514722 ** 2
    assert wilson_interval(0, 3, 0.9) == pytest.approx((0.0, z2 / (3 + z2)))
    lo, hi = wilson_interval(3, 3, 0.9)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(1 - z2 / (3 + z2))
    with pytest.raises(ValueError):
        wilson_interval(4, 3, 0.9)


@pytest.mark.parametrize(("k", "n", "decision"), [
    (0, 1, "pass"), (1, 1, "fail"), (0, 3, "pass"), (1, 3, "undecided"), (2, 3, "fail"), (3, 3, "fail"),
    (1, 6, "undecided"), (2, 6, "fail"), (1, 9, "pass"), (2, 12, "pass"), (4, 12, "fail")])
def test_the_default_rates_decide_as_documented(k: int, n: int, decision: str) -> None:
    assert decide_rate(k, n, RateSettings()) == RateDecision(decision)


def test_rates_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="must be below"):
        RateSettings(acceptable_failure_rate=0.5, unacceptable_failure_rate=0.2)


def test_the_operating_characteristic_is_that_of_the_procedure() -> None:
    """The exact outcome probabilities agree with simulating the procedure."""
    rates, rng = RateSettings(), np.random.default_rng(0)
    for p in (0.05, 0.3):
        oc = operating_characteristic(p, 3, rates)
        assert oc.p_fail + oc.p_pass + oc.p_undecided == pytest.approx(1.0)
        outcomes, spent = [], []
        for _ in range(20000):
            n, k, size = 0, 0, 3
            while size:
                k += int((rng.random(size) < p).sum())
                n += size
                d = decide_rate(k, n, rates)
                size = more_replicas(n, rates) if d == RateDecision.UNDECIDED else 0
            outcomes.append(d)
            spent.append(n)
        assert np.mean([o == RateDecision.FAIL for o in outcomes]) == pytest.approx(oc.p_fail, abs=0.01)
        assert np.mean(spent) == pytest.approx(oc.expected_trajectories, rel=0.02)
    # Good models stay cheap and pass; bad ones fail as fast as one look allows.
    assert operating_characteristic(0.02, 3, rates).p_fail < 0.01
    assert operating_characteristic(0.02, 3, rates).expected_trajectories < 3.4
    assert operating_characteristic(0.8, 3, rates).p_fail > 0.99


# ------------------------------------------------------------------- confirmation replicas


STEADY = Molecule("steady", tetrahedron("C4", rattle_A=0.01, seed=1))
MD = {"n_steps": 200, "timestep_fs": 0.5, "temperature_K": 300.0, "record_every": 5}


def _peak_temperatures(n: int) -> list[float]:
    """Each replica's highest temperature, free runs (the gate's seeds per replica)."""
    return [max(t.temperature_K) for t in run_nve(MorsePairPotential(**MORSE), [STEADY], n_replicas=n, **MD)]


def test_an_undecided_molecule_gets_confirmation_replicas_until_decided() -> None:
    """A temperature bound that exactly one of the first three replicas crosses: 1/3 is
    undecided, so rounds of three more run; the outcome is the one the free runs predict.
    """
    peaks = _peak_temperatures(12)
    first = sorted(peaks[:3])
    bound = first[1]  # only the hottest of the first three crosses it
    config = GateConfig.model_validate({
        "md": {**MD, "n_replicas": 3}, "stress": {"enabled": False}, "oracle": {"enabled": False},
        "criteria": {"max_temperature_K": {"bound": bound}}})
    [run] = run_md(MorsePairPotential(**MORSE), [STEADY], config)
    mol = run.nve
    assert mol is not None and mol.rate is not None
    n, k = 3, 1
    expected = decide_rate(k, n, config.rates)
    while expected == RateDecision.UNDECIDED and n < 12:
        k += sum(p > bound for p in peaks[n:n + 3])
        n += 3
        expected = decide_rate(k, n, config.rates)
    assert expected != RateDecision.UNDECIDED or n == 12
    assert mol.rate.n_trajectories == n > 3 and mol.rate.n_failed == k
    assert mol.rate.decision == expected.value
    assert mol.rate.confirmation_replicas == n - 3
    assert [r.replica for r in mol.replicas] == list(range(n))
    assert [r.failure is not None for r in mol.replicas] == [p > bound for p in peaks[:n]]
    assert mol.passed is (expected == RateDecision.PASS)
    temp = next(c for c in mol.checks if c.name == "max_temperature_K")
    if expected == RateDecision.PASS:
        assert temp.passed is True and "failure rate tolerated" in temp.note
    # Without rates, one failing trajectory of three fails the molecule and nothing more runs.
    config.rates.enabled = False
    [plain] = run_md(MorsePairPotential(**MORSE), [STEADY], config)
    assert plain.nve is not None and len(plain.nve.replicas) == 3 and plain.nve.passed is False
    assert plain.nve.rate is None


def test_a_clear_failure_runs_no_confirmation() -> None:
    peaks = _peak_temperatures(3)
    config = GateConfig.model_validate({
        "md": {**MD, "n_replicas": 3}, "stress": {"enabled": False}, "oracle": {"enabled": False},
        "criteria": {"max_temperature_K": {"bound": min(peaks) - 1.0}}})
    [run] = run_md(MorsePairPotential(**MORSE), [STEADY], config)
    assert run.nve is not None and run.nve.rate is not None
    assert (run.nve.rate.n_failed, run.nve.rate.n_trajectories, run.nve.rate.decision) == (3, 3, "fail")
    assert run.nve.passed is False


# ------------------------------------------------------------------------ held structural checks


def test_sustained_is_the_level_held_for_the_window() -> None:
    series = [0.0, 0.6, 0.1, 0.7, 0.7, 0.7, 0.2]
    assert sustained(series, 1) == 0.7
    assert sustained(series, 3) == 0.7  # three records at 0.7
    assert sustained(series, 4) == 0.2
    assert sustained([1.5, 0.9, 0.9, 1.4], 2, lower=True) == 0.9
    assert sustained([0.1], 2) is None


def test_a_vibration_overshoot_is_not_a_broken_bond_but_a_held_excursion_is() -> None:
    """A vibrating molecule's bond-deviation peak crosses a bound set between its peak and the
    level it held for 20 records: the plain detector stops it, the held one does not; the level
    it reports is the held one.
    """
    hot = {**MD, "temperature_K": 2000.0}
    [free] = run_nve(MorsePairPotential(**MORSE), [STEADY], **hot)
    series = free.series["max_bond_deviation_A"]
    peak, held = sustained(series, 1), sustained(series, 20)
    assert peak is not None and held is not None and peak > held
    bound = 0.5 * (peak + held)
    limits = StopLimits(max_bond_deviation_A=bound)
    specs = {h: nve_specs([STEADY], n_replicas=1, n_steps=hot["n_steps"], temperature_K=2000.0, seed=0,
                          limits=limits, hold=h) for h in (1, 20)}
    [plain] = run_batch(MorsePairPotential(**MORSE), specs[1], timestep_fs=0.5, record_every=5)
    [kept] = run_batch(MorsePairPotential(**MORSE), specs[20], timestep_fs=0.5, record_every=5)
    assert plain.failure is not None and plain.failure.check == "max_bond_deviation_A"
    assert kept.failure is None and kept.steps_done == hot["n_steps"]
    config = GateConfig.model_validate({"criteria": {"max_bond_deviation_A": {"bound": bound}}})
    rep = evaluate_trajectory(kept, config.criteria)
    bond = next(c for c in rep.checks if c.name == "max_bond_deviation_A")
    assert bond.passed is True and bond.value == pytest.approx(held)
    assert rep.metrics["max_bond_deviation_A_peak"] == pytest.approx(peak)


def test_a_bond_pulled_apart_fails_a_held_check_where_it_began() -> None:
    pulled = Molecule("pulled", tetrahedron("Cl2C2", rattle_A=0.01, seed=2))
    puller = MorsePairPotential(**MORSE, pull_z=17, pull_eV_per_A=3.0)
    [free] = run_nve(puller, [pulled], n_steps=300, timestep_fs=0.5, temperature_K=300.0, record_every=10)
    specs = nve_specs([pulled], n_replicas=1, n_steps=300, temperature_K=300.0, seed=0,
                      limits=StopLimits(max_bond_deviation_A=0.5), hold=5)
    [tr] = run_batch(puller, specs, timestep_fs=0.5, record_every=10)
    onset = int(np.argmax(np.asarray(free.series["max_bond_deviation_A"]) > 0.5))
    assert tr.failure is not None and tr.failure.check == "max_bond_deviation_A"
    assert tr.failure.step == free.step[onset]  # time to failure: where the excursion began
    assert tr.steps_done == free.step[onset + 4]  # stopped once it had lasted five records


def test_the_report_shows_each_molecules_failure_rate_and_the_survival_plot(tmp_path) -> None:
    from mdgate.checks.table import Stage
    from mdgate.checks.verdict import decide, md_stage_result
    from mdgate.report.markdown import write_report
    from mdgate.results import ModelInfo, ValidationResult, Verdict

    pulled = Molecule("pulled", tetrahedron("Cl2C2", rattle_A=0.01, seed=2))
    puller = MorsePairPotential(**MORSE, pull_z=17, pull_eV_per_A=3.0)
    config = GateConfig.model_validate({"md": {"enabled": False, "n_replicas": 3, "record_every": 5},
                                        "stress": {"ramp_ps": 0.05, "hold_ps": 0.1}, "oracle": {"enabled": False}})
    runs = run_md(puller, [STEADY, pulled], config)
    mols = [r.stress for r in runs if r.stress is not None]
    stage = md_stage_result(Stage.STRESS, mols, True, True, 1.0, config.stress.model_dump(mode="json"), "")
    result = decide(ValidationResult(verdict=Verdict.ERROR, reason="", model=ModelInfo(source="morse"),
                                     criteria={"config": config.model_dump(mode="json")}, stages={"stress": stage}))
    assert result.verdict == Verdict.REJECTED and result.decided_by == "stress/max_bond_deviation_A"
    assert "3/3 failed (failure rate" in result.reason
    files = write_report(result, tmp_path)
    text = files["report.md"].read_text()
    assert "### Failure rates over trajectories" in text
    assert "| stress | pulled | 3 | 3 | 0 % |" in text and "| stress | steady | 3 | 0 | 100 % |" in text
    assert (tmp_path / "plots" / "survival_stress.png").stat().st_size > 1000
