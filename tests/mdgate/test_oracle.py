"""The on-trajectory oracle: who judges the candidate's forces on its own frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mdgate.config import GateConfig
from mdgate.errors import ConfigError
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_potential
from mdgate.stages.oracle import make_oracle, pick_frames, run_oracle_stage


def frames_of(molecules, n: int = 2, rattle_A: float = 0.05):
    rng = np.random.default_rng(0)
    return [("nve", m.name, m.atoms.numbers,
             m.atoms.positions + rng.normal(scale=rattle_A, size=m.atoms.positions.shape))
            for m in molecules for _ in range(n)]


def config(**oracle) -> GateConfig:
    return GateConfig.model_validate({"oracle": oracle})


def test_the_parent_oracle_judges_a_student_against_its_teacher(good_model_path: Path, untrained_model_path: Path,
                                                                  packaged_molecules) -> None:
    mols = [m for m in packaged_molecules if m.name in ("ethanol", "uracil")]
    good = load_potential(good_model_path, ModelMeta(cutoff_A=5.0), "cpu")
    same = run_oracle_stage(good, frames_of(mols), config(kind="parent"), None, parent=good)
    assert same.oracle == "parent model" and same.per_molecule["all"]["force_r2"] == pytest.approx(1.0)
    assert same.passed is True and same.per_molecule["all"]["n_frames"] == 4
    untrained = load_potential(untrained_model_path, ModelMeta(), "cpu")
    bad = run_oracle_stage(untrained, frames_of(mols), config(kind="parent"), None, parent=good)
    assert bad.passed is False
    assert {c.name: c.passed for c in bad.checks}["min_force_r2"] is False


def test_the_xtb_oracle_agrees_with_a_trained_model_on_rattled_geometries(good_model_path: Path,
                                                                           packaged_molecules) -> None:
    mols = [m for m in packaged_molecules if m.name == "ethanol"]
    good = load_potential(good_model_path, ModelMeta(cutoff_A=5.0), "cpu")
    res = run_oracle_stage(good, frames_of(mols, 2), config(), "GFN2-xTB")
    assert res.oracle == "GFN2-xTB (tblite)"
    assert res.per_molecule["all"]["force_r2"] > 0.95 and res.passed is True
    other = run_oracle_stage(good, frames_of(mols, 1), config(), "DFT (PBE)")
    assert other.passed is None and "not comparable" in other.note  # another level: reported, never passed


def test_an_ase_calculator_by_import_path(good_model_path: Path, packaged_molecules) -> None:
    mols = [m for m in packaged_molecules if m.name == "ethanol"]
    good = load_potential(good_model_path, ModelMeta(cutoff_A=5.0), "cpu")
    res = run_oracle_stage(good, frames_of(mols, 1), config(kind="ase", calculator="ase.calculators.lj:LennardJones",
                                                            calculator_kwargs={"sigma": 1.0}), None)
    assert res.oracle == "ase.calculators.lj:LennardJones" and res.ran
    with pytest.raises(ConfigError, match=r"oracle.calculator = 'ase.calculators.nope:X'.*cannot import"):
        make_oracle(config(kind="ase", calculator="ase.calculators.nope:X").oracle)
    with pytest.raises(ConfigError, match="parent"):
        make_oracle(config(kind="parent").oracle)


def test_frames_are_spread_over_what_the_trajectory_completed() -> None:
    snaps = [(step, np.zeros((1, 3))) for step in range(10, 110, 10)]
    assert [s for s, _ in pick_frames(snaps, 3)] == [10, 50, 100]
    assert len(pick_frames(snaps[:2], 3)) == 2
