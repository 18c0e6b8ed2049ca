"""Accuracy on a reference set: predictions agree with schnetpack's own calculator, and a
reference of another level of theory is reported as not applicable, never as passed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import schnetpack as spk
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from mdgate.checks.metrics import force_accuracy
from mdgate.config import parse_config
from mdgate.errors import MoleculeSetError
from mdgate.molecules import check_reference_matches, read_molecules, read_reference
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_potential
from mdgate.runner import validate
from mdgate.stages.accuracy import run_accuracy
from tests.models import QUICK_STAGES


def relabelled(src: Path, dst: Path, level: str | None) -> Path:
    """A copy of a reference file with every frame declaring ``level`` as its level of theory."""
    frames = read(src, index=":")
    for f in frames:
        if level is None:
            f.info.pop("level_of_theory", None)
        else:
            f.info["level_of_theory"] = level
    write(dst, frames)
    return dst


def test_predictions_match_schnetpacks_own_calculator(untrained_model_path: Path, small_set) -> None:
    reference = read_reference(small_set.reference)
    pot = load_potential(untrained_model_path, device="cpu")
    acc = run_accuracy(pot, reference, parse_config({}), "GFN2-xTB", batch_size=7)
    calc = spk.interfaces.SpkCalculator(
        model=str(untrained_model_path), neighbor_list=spk.transform.ASENeighborList(cutoff=5.0),
        energy_unit="eV", position_unit="Ang")
    pred_f, ref_f = [], []
    for frame in reference.frames:
        atoms = frame.copy()
        atoms.calc = calc
        pred_f.append(atoms.get_forces())
        ref_f.append(frame.get_forces())
    expected = force_accuracy(np.concatenate(pred_f), np.concatenate(ref_f))
    assert acc.force_r2 == pytest.approx(expected["force_r2"], abs=1e-5)
    assert acc.force_mae_eV_per_A == pytest.approx(expected["force_mae_eV_per_A"], rel=1e-5)
    assert acc.n_frames == 40 and set(acc.per_molecule) == {"ethanol", "malonaldehyde"}
    assert acc.applicable
    assert {c.name: c.passed for c in acc.checks}["min_force_r2"] is False  # untrained


def test_a_reference_of_another_level_of_theory_is_not_applicable(
        tmp_path: Path, untrained_model_path: Path, small_set) -> None:
    dft = relabelled(small_set.reference, tmp_path / "dft.extxyz", "DFT/wB97X-D")
    assert read_reference(dft).level_of_theory == "DFT/wB97X-D"
    base = {**QUICK_STAGES, "md": {"n_steps": 20, "device": "cpu"}, "molecules": str(small_set.molecules)}
    same = validate(untrained_model_path, parse_config({**base, "reference": str(small_set.reference)}),
                    ModelMeta(level_of_theory="GFN2-xTB"))
    other = validate(untrained_model_path, parse_config({**base, "reference": str(dft)}),
                     ModelMeta(level_of_theory="GFN2-xTB"))
    # Same reference numbers: applicable, the untrained model fails the R² bound ...
    assert same.accuracy is not None and same.accuracy.applicable
    assert any(f.startswith("accuracy: min_force_r2") for f in same.failed_checks)
    # ... but against a declared DFT reference the comparison is not made: not passed, not failed.
    acc = other.accuracy
    assert acc is not None and acc.applicable is False
    assert acc.reference_level_of_theory == "DFT/wB97X-D" and acc.model_level_of_theory == "GFN2-xTB"
    assert [c.passed for c in acc.checks] == [None, None, None]
    assert not any(f.startswith("accuracy:") for f in other.failed_checks)
    assert "force R²" not in other.reason


def test_a_model_without_declared_level_is_compared_and_says_so(
        untrained_model_path: Path, small_set) -> None:
    pot = load_potential(untrained_model_path, device="cpu")
    acc = run_accuracy(pot, read_reference(small_set.reference), parse_config({}), None)
    assert acc.applicable and "declares no level of theory" in acc.note


def test_mixed_levels_of_theory_are_refused(tmp_path: Path, small_set) -> None:
    frames = read(small_set.reference, index=":")
    frames[0].info["level_of_theory"] = "DFT/PBE"
    write(tmp_path / "mixed.extxyz", frames)
    with pytest.raises(MoleculeSetError, match="mixed levels of theory"):
        read_reference(tmp_path / "mixed.extxyz")


def test_a_reference_frame_with_other_atoms_than_its_molecule_is_refused(tmp_path: Path, small_set) -> None:
    wrong = molecule("CH3CH2OH")
    wrong.pop()  # C2H5O, named ethanol
    wrong.info["name"] = "ethanol"
    wrong.calc = SinglePointCalculator(wrong, energy=-1.0, forces=np.zeros((len(wrong), 3)))
    write(tmp_path / "ref.extxyz", [wrong])
    with pytest.raises(MoleculeSetError, match="reference frame of 'ethanol' has atoms C2H5O"):
        check_reference_matches(read_molecules(small_set.molecules), read_reference(tmp_path / "ref.extxyz"))
