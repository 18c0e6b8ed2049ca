"""The fast paths change nothing measurable: the compiled model gives the eager forces, and a
short run's energy oscillation is not mistaken for drift while a real drift still fails.
"""

from __future__ import annotations

import numpy as np
import torch

from mdgate.checks.evaluate import evaluate_trajectory
from mdgate.checks.metrics import drift_slope_meV_per_atom_per_ps, drift_slope_stderr_meV_per_atom_per_ps
from mdgate.config import Criteria, GateConfig
from mdgate.md.trajectory import Trajectory
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_potential
from mdgate.stages.md import compile_step, run_md
from tests.models import quick


def _traj(e_tot: np.ndarray, n_atoms: int = 10, timestep_fs: float = 0.5, every: int = 1) -> Trajectory:
    steps = list(range(0, every * len(e_tot), every))
    tr = Trajectory("m", 0, n_atoms, 3 * n_atoms - 6, steps[-1], timestep_fs, steps_done=steps[-1])
    tr.step = steps
    tr.e_pot_eV = list(e_tot)
    tr.e_kin_eV = [0.0] * len(e_tot)
    tr.temperature_K = [300.0] * len(e_tot)
    tr.series = {"max_force_eV_per_A": [1.0] * len(e_tot), "max_temperature_K": [300.0] * len(e_tot),
                 "max_bond_deviation_A": [0.01] * len(e_tot)}
    return tr


def test_stderr_of_slope_is_small_for_a_clean_trend_and_large_for_a_short_oscillation() -> None:
    t = np.linspace(0, 2, 401)
    trend = 0.5e-3 * 20 * t + 1e-3 * np.sin(2 * np.pi * t / 0.02)
    assert abs(drift_slope_meV_per_atom_per_ps(t, trend, 20) - 0.5) < 0.01
    assert drift_slope_stderr_meV_per_atom_per_ps(t, trend, 20) < 0.02
    t = np.linspace(0, 0.15, 31)
    wobble = 0.3e-3 * 20 * np.sin(2 * np.pi * t / 0.05)
    assert abs(drift_slope_meV_per_atom_per_ps(t, wobble, 20)) > 0.5
    assert drift_slope_stderr_meV_per_atom_per_ps(t, wobble, 20) > 0.5


def test_short_oscillation_passes_as_noise_but_a_real_drift_fails() -> None:
    n = 10
    # 0.15 ps of pure oscillation (0.3 meV/atom amplitude): apparent slope > 0.5, not significant.
    t = np.arange(31) * 0.005
    wobble = 1000.0 + 0.3e-3 * n * np.sin(2 * np.pi * t / 0.05)
    check = next(c for c in evaluate_trajectory(_traj(wobble, n, 0.5, 10), Criteria()).checks
                 if c.name == "drift_slope_meV_per_atom_per_ps")
    assert check.value > 0.5 and check.passed is True and "within noise" in check.note
    # 2 ps with a 2 meV/atom/ps drift under the same oscillation: significant, fails.
    t = np.arange(401) * 0.005
    drift = 1000.0 + (2e-3 * t + 0.3e-3 * np.sin(2 * np.pi * t / 0.05)) * n
    check = next(c for c in evaluate_trajectory(_traj(drift, n, 0.5, 10), Criteria()).checks
                 if c.name == "drift_slope_meV_per_atom_per_ps")
    assert abs(check.value - 2.0) < 0.1
    assert check.passed is False


def test_compiled_model_gives_the_eager_forces_and_the_same_md(untrained_model_path, packaged_molecules) -> None:
    mols = [m for m in packaged_molecules if m.name in ("ethanol", "uracil")]
    cfg = GateConfig.model_validate(quick({"md": {"n_steps": 30, "compile": "on", "fail_fast": False},
                                           "stress": {"enabled": False}}))
    eager = load_potential(untrained_model_path, ModelMeta(), "cpu")
    compiled = load_potential(untrained_model_path, ModelMeta(), "cpu")
    off = cfg.model_copy(update={"md": cfg.md.model_copy(update={"compile": "off"})})
    assert compile_step(mols, cfg) == 1 and compile_step(mols, off) is None
    a = [r.nve for r in run_md(eager, mols, off)]
    b = [r.nve for r in run_md(compiled, mols, cfg)]
    assert eager.model_call == "eager" and compiled.model_call == "compiled"
    for ma, mb in zip(a, b, strict=True):
        ea = np.array(ma.replicas[0].series["e_tot_minus_e0_meV_per_atom"])
        eb = np.array(mb.replicas[0].series["e_tot_minus_e0_meV_per_atom"])
        # float32 rounding only: far below the 2 meV/atom bound and the replica-to-replica spread
        assert np.max(np.abs(ea - eb)) < 0.05


def test_auto_compiles_only_long_runs_after_the_fail_fast_window(packaged_molecules) -> None:
    short = GateConfig.model_validate({"md": {"n_steps": 400}})
    long = GateConfig.model_validate({"md": {"n_steps": 4000}})
    assert compile_step(packaged_molecules, short) is None
    assert compile_step(packaged_molecules, long) == 200


def test_compile_falls_back_to_eager_when_the_model_cannot_be_checked(untrained_model_path) -> None:
    pot = load_potential(untrained_model_path, ModelMeta(), "cpu")
    bad_check = (torch.tensor([1]), torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.long), 1,
                 torch.tensor([5]), torch.tensor([6]))  # pair indices out of range: the call fails
    assert pot.compile(bad_check).startswith("eager: compilation failed")
    assert not hasattr(pot.model.representation, "_orig_mod")
