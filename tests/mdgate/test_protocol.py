"""The validation protocol's stages: sanity before MD, the heat-stress ramp, the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mdgate.config import parse_config
from mdgate.md.batch import run_batch, run_stress
from mdgate.md.trajectory import Ramp, StopLimits, nve_specs, stress_specs
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_module
from mdgate.results import Verdict
from mdgate.runner import load_inputs, run_pipeline
from tests.models import MODEL_META, HoleModel, MorsePairPotential, NonConservativeModel, save_model, tetrahedron

#: The small set (ethanol, malonaldehyde): NVE 1 ps × 3 replicas, stress 300 → 800 K over
#: 0.5 ps then 0.25 ps; no oracle (xTB on collapsed frames says nothing the detectors do not).
HOT = {"md": {"n_steps": 2000, "n_replicas": 3, "device": "cpu"},
       "stress": {"end_temperature_K": 800.0, "ramp_ps": 0.5, "hold_ps": 0.25},
       "oracle": {"enabled": False}}
#: Nearest H–H distance on the small set: ≥ 1.642 Å in 3 × 1 ps of NVE at 300 K (painn_small),
#: ≥ 1.540 Å in the 500 K reference frames, down to 1.459 Å under the 800 K ramp. The hole opens
#: below 1.49 Å (at 1.54 Å it adds 5e-5 eV).
HOLE = {"z1": 1, "z2": 1, "r_on_A": 1.49, "depth_eV": 2.0, "width_A": 0.005}


def test_baoab_holds_the_target_temperature() -> None:
    """32 Morse tetrahedra under BAOAB at 600 K: the mean temperature (3N degrees of freedom)
    over the second half is the target within 5 %.
    """
    mols = [Molecule(f"t{k}", tetrahedron("CCCC", rattle_A=0.02, seed=k)) for k in range(32)]
    trajs = run_stress(MorsePairPotential(epsilon_eV=2.0), mols, ramp=Ramp(600.0, 600.0, 0, 20.0), n_steps=4000,
                       timestep_fs=0.5, seed=3, record_every=10)
    temps = np.array([t.temperature_K[len(t.temperature_K) // 2:] for t in trajs])
    assert all(t.failure is None for t in trajs)
    assert temps.mean() == pytest.approx(600.0, rel=0.05)
    assert trajs[0].target_temperature_K[-1] == 600.0


def test_the_ramp_follows_its_target() -> None:
    mols = [Molecule(f"t{k}", tetrahedron("CCCC", rattle_A=0.02, seed=k)) for k in range(32)]
    trajs = run_stress(MorsePairPotential(epsilon_eV=2.0), mols, ramp=Ramp(300.0, 900.0, 3000, 20.0), n_steps=4000,
                       timestep_fs=0.5, seed=4)
    last = np.mean([np.mean(t.temperature_K[-50:]) for t in trajs])
    assert last == pytest.approx(900.0, rel=0.08)
    assert trajs[0].target_temperature_K[0] == 300.0 and trajs[0].target_temperature_K[-1] == 900.0


def test_a_stress_trajectory_does_not_depend_on_its_batch() -> None:
    """Each thermostatted trajectory has its own noise stream: run alone, with other molecules,
    with NVE trajectories of another length (one of which stops early), it is the same trajectory.
    """
    pot = MorsePairPotential(epsilon_eV=2.0)
    mols = [Molecule(f"t{k}", tetrahedron("CCCC", rattle_A=0.02, seed=k)) for k in range(4)]
    ramp = Ramp(300.0, 900.0, 200, 20.0)
    alone = run_batch(pot, stress_specs(mols[:1], n_replicas=1, ramp=ramp, n_steps=300, seed=5), timestep_fs=0.5)
    early = StopLimits(max_temperature_K=1.0)  # the NVE trajectories of mols[1] stop at step 0
    mixed = (nve_specs(mols[1:2], n_replicas=2, n_steps=100, temperature_K=300.0, seed=0, limits=early)
             + stress_specs(mols, n_replicas=2, ramp=ramp, n_steps=300, seed=5)
             + nve_specs(mols[2:], n_replicas=1, n_steps=150, temperature_K=300.0, seed=0))
    together = run_batch(pot, mixed, timestep_fs=0.5)
    first = [t for t, sp in zip(together, mixed, strict=True) if sp.ramp and sp.molecule is mols[0]]
    same, other = first
    assert together[0].failure is not None and together[0].steps_done == 0
    np.testing.assert_allclose(same.temperature_K, alone[0].temperature_K, rtol=1e-9)
    np.testing.assert_allclose(same.e_pot_eV, alone[0].e_pot_eV, rtol=1e-9, atol=1e-12)
    assert not np.allclose(other.temperature_K, same.temperature_K)


def test_sanity_rejects_a_non_conservative_model_before_md(tmp_path: Path, good_model_path: Path,
                                                           small_set) -> None:
    """A curl field of 0.01 eV/Å² (force R² moves < 0.001) fails the finite-difference and torque
    checks in seconds; no MD runs.
    """
    path = save_model(NonConservativeModel(load_module(good_model_path), 0.01), tmp_path / "curl.pt", MODEL_META)
    config = parse_config({**HOT, "molecules": str(small_set.molecules), "reference": str(small_set.reference)})
    meta = ModelMeta(**MODEL_META)
    result = run_pipeline(load_inputs(path, config, meta), config, meta, "curl")
    assert result.verdict == Verdict.REJECTED
    assert result.decided_by is not None and result.decided_by.startswith("sanity/")
    assert {f.check for f in result.failures} >= {"fd_force_error_relative", "net_torque_eV"}
    assert not result.stages["nve"].ran and not result.stages["stress"].ran and result.molecules == []
    assert result.timing.md_s < 1.0 and result.timing.sanity_s < 30.0
    assert "rejected by the sanity stage" in result.reason


@pytest.mark.slow
def test_a_hole_only_hot_modes_reach_is_rejected_by_the_stress_stage(tmp_path: Path, good_model_path: Path,
                                                                      small_set) -> None:
    """painn_small with an H–H well below 1.52 Å: sanity, NVE at 300 K and reference R² pass it;
    the heat-stress ramp drops it into the hole and rejects it, and so does the pes stage's
    close-contact pull, without MD (named after the stress stage in the reason).
    """
    meta = ModelMeta(**MODEL_META)
    sets = {"molecules": str(small_set.molecules), "reference": str(small_set.reference)}
    hole = save_model(HoleModel(load_module(good_model_path), **HOLE), tmp_path / "hole.pt", MODEL_META)

    def run(model: Path, stress: bool, pes: bool = True):
        config = parse_config({**HOT, **sets, "stress": {**HOT["stress"], "enabled": stress},
                               "pes": {"enabled": pes}})
        return run_pipeline(load_inputs(model, config, meta), config, meta, model.name)

    base = run(good_model_path, True)
    assert base.verdict == Verdict.APPROVED, base.reason  # the well of the base model is sound
    today = run(hole, False, pes=False)
    assert today.verdict == Verdict.APPROVED, today.reason
    assert today.accuracy is not None and today.accuracy.force_r2 == pytest.approx(base.accuracy.force_r2, abs=1e-3)
    hot = run(hole, True)
    assert hot.verdict == Verdict.REJECTED
    assert hot.decided_by is not None and hot.decided_by.startswith("stress/"), hot.reason
    assert any(f.stage == "pes" and f.check == "close_contact_well_meV" for f in hot.failures)
    fails = [r.failure for m in hot.stages["stress"].molecules for r in m.replicas if r.failure]
    assert fails and all(f.temperature_K is not None and f.time_ps > 0 for f in fails)
    assert min(f.target_temperature_K for f in fails) > 300.0  # the hole needs heat
    data = json.loads(hot.model_dump_json())
    assert data["stages"]["stress"]["molecules"][0]["replicas"][0]["metrics"]["completed_fraction"] is not None
    print("hole:", hot.reason, [(f.check, round(f.time_ps, 3), round(f.temperature_K)) for f in fails])
