"""Input checks shared by ``mdgate validate`` and the gate."""

from __future__ import annotations

import pytest

from mdgate.checks.inputs import check_cutoff
from mdgate.config import GateConfig
from mdgate.errors import MetadataError
from mdgate.potentials import ModelMeta
from mdgate.runner import load_inputs
from tests.models import quick


def test_cutoff_declared_or_read_and_they_must_agree() -> None:
    assert check_cutoff(5.0, None, "Angstrom") == 5.0
    assert check_cutoff(None, 4.0, "Angstrom") == 4.0
    assert check_cutoff(5.0, 5.0, "Angstrom") == 5.0
    with pytest.raises(MetadataError, match=r"contradictory metadata: mdgate\.cutoff_A = 5 Å but the model"):
        check_cutoff(5.0, 2.6458, "Bohr")
    with pytest.raises(MetadataError, match="no cutoff"):
        check_cutoff(None, None, "Angstrom")


def test_validate_checks_the_cutoff_as_the_gate_does(repo_root) -> None:
    """A declared cutoff that contradicts the model's own is an Error before any stage runs."""
    config = GateConfig.model_validate(quick({}))
    with pytest.raises(MetadataError, match="contradictory metadata"):
        load_inputs(repo_root / "examples/models/student_20x.pt", config, ModelMeta(cutoff_A=1.5))


def test_molecules_named_under_molecule_keep_their_name(tmp_path) -> None:
    from ase.build import molecule
    from ase.io import write

    from mdgate.molecules import read_molecules

    water, methane = molecule("H2O"), molecule("CH4")
    water.info["molecule"] = "water"
    methane.info["name"] = "methane"
    write(tmp_path / "set.extxyz", [water, methane])
    assert [m.name for m in read_molecules(tmp_path / "set.extxyz")] == ["water", "methane"]


def test_an_ase_calculator_needs_no_cutoff(tmp_path) -> None:
    """The issue's minimal descriptor (no cutoff, no elements) loads and runs: ASE's EMT."""
    (tmp_path / "mdgate.yaml").write_text(
        "framework: ase\nloader: ase.calculators.emt:EMT\nkwargs: {}\nenergy_unit: eV\nlength_unit: Angstrom\n"
        "level_of_theory: EMT\n")
    assert check_cutoff(None, None, "Angstrom", required=False) is None
    inputs = load_inputs(tmp_path, GateConfig.model_validate(quick({})))
    assert inputs.potential.cutoff_A is None and len(inputs.molecules) == 10


def test_an_ase_potential_crosses_to_a_worker_process_by_its_descriptor(tmp_path) -> None:
    """EMT cannot be pickled once used; the potential travels as its descriptor and is rebuilt."""
    import pickle

    import torch

    (tmp_path / "mdgate.yaml").write_text(
        "framework: ase\nloader: ase.calculators.emt:EMT\nenergy_unit: eV\nlength_unit: Angstrom\n")
    inputs = load_inputs(tmp_path, GateConfig.model_validate(quick({})))
    pot, atoms = inputs.potential, inputs.molecules[0].atoms
    args = (torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions), torch.zeros(len(atoms), dtype=torch.long),
            1, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    e0, f0 = pot(*args)
    copy = pickle.loads(pickle.dumps(pot))
    e1, f1 = copy(*args)
    assert torch.equal(e0, e1) and torch.equal(f0, f1)
