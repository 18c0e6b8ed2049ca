"""Metric functions and check evaluation on synthetic series with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from mdgate.checks import evaluate as checks
from mdgate.checks import metrics
from mdgate.checks.verdict import decide
from mdgate.config import Bound, Criteria
from mdgate.md.trajectory import Failure, Trajectory
from mdgate.results import ModelInfo, ValidationResult, Verdict

N_ATOMS = 10


def test_drift_slope_of_a_linear_series_is_its_slope_in_meV_per_atom_per_ps() -> None:
    t = np.linspace(0.0, 2.0, 201)  # ps
    e = -1234.5 + 0.005 * t  # +5 meV/ps over 10 atoms = 0.5 meV/atom/ps
    assert metrics.drift_slope_meV_per_atom_per_ps(t, e, N_ATOMS) == pytest.approx(0.5, rel=1e-9)
    falling = -1234.5 - 0.02 * t
    assert metrics.drift_slope_meV_per_atom_per_ps(t, falling, N_ATOMS) == pytest.approx(-2.0, rel=1e-9)


def test_drift_slope_sees_through_a_large_oscillation() -> None:
    t = np.linspace(0.0, 2.0, 2001)
    wiggle = 0.05 * np.cos(2 * np.pi * 10 * t / 2.0)  # 50 meV, 100x the drift over the run
    e = -50.0 + 0.005 * t + wiggle
    assert metrics.drift_slope_meV_per_atom_per_ps(t, e, N_ATOMS) == pytest.approx(0.5, rel=0.02)


def test_drift_slope_of_one_record_is_not_measurable() -> None:
    assert np.isnan(metrics.drift_slope_meV_per_atom_per_ps(np.array([0.0]), np.array([1.0]), 3))


def test_max_energy_deviation_is_the_largest_excursion_from_the_start() -> None:
    e = np.array([-10.0, -10.001, -10.003, -9.998, -10.0])
    assert metrics.max_energy_deviation_meV_per_atom(e, 3) == pytest.approx(1.0)


def test_seed_figures_are_percent_of_the_initial_energy() -> None:
    t = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    e = np.array([-100.0, -99.9, -99.8, -99.85, -99.9])
    fig = metrics.seed_figures(t, e)
    assert fig["initial_energy_eV"] == -100.0
    assert fig["final_energy_eV"] == -99.9
    assert fig["total_drift_percent"] == pytest.approx(0.1)
    assert fig["max_drift_percent"] == pytest.approx(0.2)
    assert fig["drift_rate_percent_per_ps"] == pytest.approx(0.05)


def test_drift_over_kinetic_std() -> None:
    t = np.linspace(0.0, 1.0, 101)
    ekin = 1.0 + 0.1 * np.where(np.arange(101) % 2, 1.0, -1.0)  # σ = 0.1 eV (almost exactly)
    e = 0.02 * t  # 0.02 eV drift over the run
    assert metrics.drift_over_kinetic_std(t, e, ekin) == pytest.approx(0.2, rel=1e-3)


def test_force_r2_mae_rmse_of_perfect_scaled_and_useless_predictions() -> None:
    ref = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    perfect = metrics.force_accuracy(ref.copy(), ref)
    assert perfect == {"force_r2": 1.0, "force_mae_eV_per_A": 0.0, "force_rmse_eV_per_A": 0.0}
    # Components ±1 with mean 0: 10 % too small gives SS_res = 0.01·SS_tot.
    scaled = metrics.force_accuracy(0.9 * ref, ref)
    assert scaled["force_r2"] == pytest.approx(0.99)
    assert scaled["force_mae_eV_per_A"] == pytest.approx(0.1)
    assert scaled["force_rmse_eV_per_A"] == pytest.approx(0.1)
    assert metrics.force_accuracy(np.zeros_like(ref), ref)["force_r2"] == pytest.approx(0.0)
    assert metrics.force_accuracy(-ref, ref)["force_r2"] == pytest.approx(-3.0)


def test_force_r2_of_noisy_predictions_is_one_minus_noise_over_signal_variance() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(0.0, 1.0, size=(20000, 3))
    pred = ref + rng.normal(0.0, 0.3, size=ref.shape)
    m = metrics.force_accuracy(pred, ref)
    assert m["force_r2"] == pytest.approx(1.0 - 0.09, abs=0.005)
    assert m["force_rmse_eV_per_A"] == pytest.approx(0.3, rel=0.01)
    assert m["force_mae_eV_per_A"] == pytest.approx(0.3 * np.sqrt(2 / np.pi), rel=0.01)


def test_bond_stretched_by_0_6_A_is_measured() -> None:
    pos0 = np.array([[0.0, 0.0, 0.0], [1.09, 0.0, 0.0], [0.0, 1.5, 0.0]])
    pos = pos0.copy()
    pos[1, 0] += 0.6
    bonds = np.array([[0, 1], [0, 2]])
    assert metrics.bond_deviation_A(pos0, pos, bonds) == pytest.approx(0.6)
    assert metrics.bond_deviation_A(pos0, pos, np.zeros((0, 2), dtype=int)) == 0.0


# ------------------------------------------------------------------------- evaluate_trajectory


def make_trajectory(e_tot_eV: np.ndarray, *, bond_dev_A: float = 0.05, steps_asked: int | None = None,
                    failure: Failure | None = None, record_every: int = 10,
                    timestep_fs: float = 0.5) -> Trajectory:
    """A trajectory recorded every ``record_every`` steps with the given total energies."""
    n = len(e_tot_eV)
    steps = [k * record_every for k in range(n)]
    ekin = 0.3 + 0.01 * np.sin(np.arange(n))
    return Trajectory(
        molecule="m", replica=0, n_atoms=N_ATOMS, dof=24,
        steps_asked=steps_asked if steps_asked is not None else steps[-1],
        timestep_fs=timestep_fs, steps_done=steps[-1], step=steps,
        e_pot_eV=list(np.asarray(e_tot_eV) - ekin), e_kin_eV=list(ekin),
        temperature_K=[300.0] * n, failure=failure,
        series={"max_force_eV_per_A": [2.0] * n, "max_temperature_K": [300.0] * n,
                "max_bond_deviation_A": list(np.linspace(0.0, bond_dev_A, n))},
    )


def by_name(result) -> dict:
    return {c.name: c for c in result.checks}


def test_evaluate_trajectory_passes_a_conserving_stable_run() -> None:
    traj = make_trajectory(np.full(401, -80.0))
    res = by_name(checks.evaluate_trajectory(traj, Criteria()))
    required = [c for c in res.values() if c.required]
    assert {c.name for c in required} == {
        "completion", "finite", "max_force_eV_per_A", "max_temperature_K", "max_bond_deviation_A",
        "drift_slope_meV_per_atom_per_ps", "max_energy_deviation_meV_per_atom"}
    assert all(c.passed for c in required)
    assert res["drift_slope_meV_per_atom_per_ps"].value == pytest.approx(0.0, abs=1e-9)


def test_bond_stretched_by_0_6_A_fails_the_0_5_A_bound() -> None:
    traj = make_trajectory(np.full(101, -80.0), bond_dev_A=0.6)
    res = by_name(checks.evaluate_trajectory(traj, Criteria()))
    bond = res["max_bond_deviation_A"]
    assert bond.value == pytest.approx(0.6)
    assert bond.bound == 0.5
    assert bond.passed is False and bond.required
    ok = by_name(checks.evaluate_trajectory(make_trajectory(np.full(101, -80.0), bond_dev_A=0.4), Criteria()))
    assert ok["max_bond_deviation_A"].passed is True


def test_known_drift_fails_the_slope_bound_with_its_value() -> None:
    # 401 records every 10 steps of 0.5 fs: 2 ps; +30 meV/ps on 10 atoms = 3 meV/atom/ps.
    traj = make_trajectory(np.full(401, -80.0))
    e = -80.0 + 0.03 * traj.time_ps
    traj.e_pot_eV = list(e - np.asarray(traj.e_kin_eV))
    res = by_name(checks.evaluate_trajectory(traj, Criteria()))
    slope = res["drift_slope_meV_per_atom_per_ps"]
    assert slope.value == pytest.approx(3.0, rel=1e-6)
    assert slope.passed is False
    assert res["max_energy_deviation_meV_per_atom"].value == pytest.approx(6.0, rel=1e-6)
    assert res["max_energy_deviation_meV_per_atom"].passed is False
    # The % figure depends on the energy zero: 60 meV of 80 eV is 0.075 %, informational.
    assert res["total_drift_percent"].value == pytest.approx(0.075, rel=1e-6)
    assert res["total_drift_percent"].passed is True and not res["total_drift_percent"].required


def test_an_early_stop_fails_completion_and_leaves_the_slope_unmeasured() -> None:
    fail = Failure("max_bond_deviation_A", step=50, time_ps=0.025, value=0.7)
    traj = make_trajectory(np.linspace(-80.0, -79.0, 6), bond_dev_A=0.7, steps_asked=1000, failure=fail)
    res = by_name(checks.evaluate_trajectory(traj, Criteria()))
    assert res["completion"].passed is False
    assert res["completion"].value == pytest.approx(0.05)
    assert res["completion"].step == 50
    assert res["max_bond_deviation_A"].passed is False
    assert res["max_bond_deviation_A"].time_ps == pytest.approx(0.025)
    assert res["drift_slope_meV_per_atom_per_ps"].passed is None
    assert "not measured" in res["drift_slope_meV_per_atom_per_ps"].note


def test_a_non_finite_stop_fails_finite() -> None:
    fail = Failure("finite", step=20, time_ps=0.01, value=float("nan"))
    e = np.array([-80.0, -80.0, np.nan])
    res = checks.evaluate_trajectory(make_trajectory(e, steps_asked=100, failure=fail), Criteria())
    named = by_name(res)
    assert named["finite"].passed is False and named["finite"].step == 20
    assert res.failure is not None and res.failure.value is None  # NaN is never written as a number


def _decide(molecules, accuracy=None):
    measured = ValidationResult(verdict=Verdict.ERROR, reason="", model=ModelInfo(source="m.pt"), criteria={},
                                molecules=molecules, accuracy=accuracy)
    return decide(measured)


def test_a_rejection_counts_failed_checks_by_name() -> None:
    bad = [checks.evaluate_trajectory(make_trajectory(np.full(101, -80.0), bond_dev_A=0.8), Criteria())
           for _ in range(2)]
    mols = [checks.summarize_molecule(name, "C2H6O", [r], 1000, N_ATOMS) for name, r in zip("ab", bad, strict=True)]
    result = _decide(mols)
    assert len(result.failures) == 2
    assert result.reason.endswith("2 required checks failed (nve/max_bond_deviation_A ×2)")


def test_an_informational_check_does_not_decide() -> None:
    crit = Criteria(max_bond_deviation_A=Bound(bound=0.5, required=False))
    res = checks.evaluate_trajectory(make_trajectory(np.full(101, -80.0), bond_dev_A=0.6), crit)
    mol = checks.summarize_molecule("m", "C2H6O", [res], 1000, N_ATOMS)
    assert by_name(res)["max_bond_deviation_A"].passed is False
    assert by_name(res)["max_bond_deviation_A"].required is False
    assert mol.passed is True
    assert _decide([mol]).verdict == Verdict.APPROVED


def test_summary_keeps_the_worst_replica_and_rejects_when_one_fails() -> None:
    good = checks.evaluate_trajectory(make_trajectory(np.full(101, -80.0), bond_dev_A=0.1), Criteria())
    bad = checks.evaluate_trajectory(make_trajectory(np.full(101, -80.0), bond_dev_A=0.8), Criteria())
    bad.replica = 1
    mol = checks.summarize_molecule("m", "C2H6O", [good, bad], 1000, N_ATOMS)
    bond = {c.name: c for c in mol.checks}["max_bond_deviation_A"]
    assert bond.value == pytest.approx(0.8)
    assert bond.passed is False
    assert mol.passed is False
    result = _decide([mol])
    assert result.verdict == Verdict.REJECTED
    assert result.failed_checks == ["m: max_bond_deviation_A = 0.8 Å (bound <= 0.5; 1/2 replicas)"]
    assert "max_bond_deviation_A" in result.reason and result.decided_by == "nve/max_bond_deviation_A"


# ---------------------------------------------------------------------------- evaluate_accuracy


def _accuracy(scale: float, reference_level: str | None, model_level: str | None):
    rng = np.random.default_rng(0)
    ref_f = [rng.normal(size=(9, 3)) for _ in range(4)]
    ref_e = np.array([-300.0, -301.0, -299.5, -300.2])
    pred_f = [scale * f for f in ref_f]
    pred_e = ref_e + 0.009  # 1 meV/atom
    return checks.evaluate_accuracy(pred_e, ref_e, pred_f, ref_f, np.full(4, 9), ["a", "a", "b", "b"],
                                    Criteria(), reference_level, model_level)


def test_accuracy_passes_and_fails_on_force_r2() -> None:
    good = _accuracy(1.0, "GFN2-xTB", "GFN2-xTB")
    assert good.applicable and good.force_r2 == pytest.approx(1.0)
    assert good.energy_mae_meV_per_atom == pytest.approx(1.0)
    assert {c.name: c.passed for c in good.checks}["min_force_r2"] is True
    assert set(good.per_molecule) == {"a", "b"} and good.per_molecule["a"]["n_frames"] == 2
    bad = _accuracy(0.0, "GFN2-xTB", "GFN2-xTB")
    assert {c.name: c.passed for c in bad.checks}["min_force_r2"] is False


def test_accuracy_against_another_level_of_theory_is_not_applicable_never_passed() -> None:
    for scale in (1.0, 0.0):  # whether or not the numbers would pass
        acc = _accuracy(scale, "DFT/PBE", "GFN2-xTB")
        assert acc.applicable is False
        assert "GFN2-xTB" in acc.note and "DFT/PBE" in acc.note
        assert [c.passed for c in acc.checks] == [None, None, None]
        assert all(c.note.startswith("not applicable") for c in acc.checks)
        mol = checks.summarize_molecule(
            "m", "C2H6O", [checks.evaluate_trajectory(make_trajectory(np.full(101, -80.0)), Criteria())],
            1000, N_ATOMS)
        result = _decide([mol], acc)
        assert result.verdict == Verdict.APPROVED
        assert "force R²" not in result.reason  # an inapplicable R² is not quoted as a result
