"""The unit check before MD: a model whose forces are a known unit ratio off the reference is an
Error naming the unit to declare; correct and merely bad models pass it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ase import units as ase_units
from typer.testing import CliRunner

from mdgate.cli import app
from mdgate.errors import MetadataError, UnitMismatchError
from mdgate.molecules import Molecule, ReferenceSet
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import SchnetpackPotential, load_module
from mdgate.potentials.unitcheck import MAX_CURVATURE_EV_PER_A2, check_force_units, diagnose_force_units
from tests.mdgate.test_rundir import short_config
from tests.models import GOOD_MODEL, NaNModel, build_painn
from tests.unit_models import KCAL_PER_MOL_PER_EV, ScaledModel

#: The factor a model's outputs are multiplied by when it is in each unit instead of eV (eV/Å).
IN_UNIT = {
    "kcal/mol": KCAL_PER_MOL_PER_EV,
    "kJ/mol": ase_units.mol / ase_units.kJ,
    "Hartree": 1 / ase_units.Hartree,
    "meV": 1000.0,
    "Rydberg": 1 / ase_units.Rydberg,
    "Hartree/Bohr": ase_units.Bohr / ase_units.Hartree,
}


def potential(module: torch.nn.Module, energy_unit: str = "eV") -> SchnetpackPotential:
    return SchnetpackPotential(module, ModelMeta(energy_unit=energy_unit))


def good() -> torch.nn.Module:
    """A fresh copy of the committed small PaiNN (eV, Å; force R² 0.99 on the reference)."""
    return load_module(GOOD_MODEL)


def test_error_is_a_metadata_error() -> None:
    assert issubclass(UnitMismatchError, MetadataError)


def test_correct_units_pass(packaged_molecules: list[Molecule], packaged_reference: ReferenceSet) -> None:
    diag = check_force_units(potential(good()), packaged_molecules, packaged_reference, "eV")
    assert diag.method == "reference" and diag.matched_unit is None and not diag.message
    assert diag.force_scale == pytest.approx(1.0, abs=0.05)
    assert diag.energy_scale == pytest.approx(1.0, abs=0.1)
    assert diag.n_frames == 8 and len(diag.molecules) == 4
    assert diag.molecules == [m.name for m in packaged_molecules[:4]]


def test_kcal_model_declared_as_ev_is_an_error(packaged_molecules: list[Molecule],
                                               packaged_reference: ReferenceSet) -> None:
    pot = potential(ScaledModel(good(), KCAL_PER_MOL_PER_EV))
    with pytest.raises(UnitMismatchError) as err:
        check_force_units(pot, packaged_molecules, packaged_reference, "eV")
    message = str(err.value)
    assert message.startswith("forces are 22.") and "× the reference" in message
    assert "1 eV = 23.06 kcal/mol" in message
    assert "the model's energy unit looks like kcal/mol, not the declared eV" in message
    assert message.endswith("tag mdgate.energy_unit=kcal/mol (or --energy-unit kcal/mol)")
    diag = diagnose_force_units(pot, packaged_molecules, packaged_reference, "eV")
    assert diag.matched_unit == "kcal/mol" and diag.matched_ratio == pytest.approx(23.06, abs=0.01)
    assert diag.force_scale == pytest.approx(23.06, rel=0.05)
    assert diag.force_error_matched < 0.1 < 20 < diag.force_error_declared


def test_the_same_model_declared_in_kcal_passes(packaged_molecules: list[Molecule],
                                                packaged_reference: ReferenceSet) -> None:
    pot = potential(ScaledModel(good(), KCAL_PER_MOL_PER_EV), "kcal/mol")
    diag = check_force_units(pot, packaged_molecules, packaged_reference, "kcal/mol")
    assert diag.force_scale == pytest.approx(1.0, abs=0.05)


def test_ev_model_declared_in_kcal_is_an_error(packaged_molecules: list[Molecule],
                                               packaged_reference: ReferenceSet) -> None:
    expected = (r"forces are 0\.04\d+× the reference.*looks like eV, not the declared kcal/mol; "
                r"tag mdgate.energy_unit=eV \(or --energy-unit eV\)")
    with pytest.raises(UnitMismatchError, match=expected):
        check_force_units(potential(good(), "kcal/mol"), packaged_molecules, packaged_reference, "kcal/mol")


@pytest.mark.parametrize("unit", sorted(IN_UNIT))
def test_each_known_unit_is_named(unit: str, packaged_molecules: list[Molecule],
                                  packaged_reference: ReferenceSet) -> None:
    pot = potential(ScaledModel(good(), IN_UNIT[unit]))
    diag = diagnose_force_units(pot, packaged_molecules, packaged_reference, "eV")
    assert diag.matched_unit == unit, diag
    assert f"like {unit}, not the declared eV" in diag.message
    if unit == "Hartree/Bohr":
        assert "--energy-unit Hartree --position-unit Bohr" in diag.message


def test_untrained_model_is_not_a_unit_error(packaged_molecules: list[Molecule],
                                             packaged_reference: ReferenceSet, atomrefs: torch.Tensor) -> None:
    """Forces uncorrelated with the reference match no unit: MD rejects such a model, not this check."""
    for scale in (1.0, KCAL_PER_MOL_PER_EV):
        pot = potential(ScaledModel(build_painn(16, 2, atomrefs), scale))
        diag = check_force_units(pot, packaged_molecules, packaged_reference, "eV")
        assert diag.matched_unit is None and abs(diag.force_scale) < 5
        assert check_force_units(pot, packaged_molecules, None, "eV").method == "plausibility"


def test_non_finite_outputs_are_left_to_md(packaged_molecules: list[Molecule],
                                           packaged_reference: ReferenceSet) -> None:
    for ref in (packaged_reference, None):
        diag = check_force_units(potential(NaNModel(good())), packaged_molecules, ref, "eV")
        assert "not finite" in diag.note and diag.matched_unit is None


def test_without_reference_plausible_forces_pass(packaged_molecules: list[Molecule]) -> None:
    diag = check_force_units(potential(good()), packaged_molecules, None, "eV")
    assert diag.method == "plausibility" and diag.n_frames == len(packaged_molecules)
    assert 30 < diag.median_curvature_eV_per_A2 < 60
    assert diag.median_force_eV_per_A < 0.2


def test_without_reference_kcal_model_declared_as_ev_is_an_error(packaged_molecules: list[Molecule]) -> None:
    pot = potential(ScaledModel(good(), KCAL_PER_MOL_PER_EV))
    with pytest.raises(UnitMismatchError) as err:
        check_force_units(pot, packaged_molecules, None, "eV")
    message = str(err.value)
    assert message.startswith("the force curvature |dF/dx| at the start geometries is 11")
    assert f"no covalent bond exceeds {MAX_CURVATURE_EV_PER_A2:g}" in message
    assert "as for a model in kcal/mol" in message and "tag mdgate.energy_unit=kcal/mol" in message
    # Too small is not flagged without a reference (an untrained model is as soft).
    assert check_force_units(potential(good(), "kcal/mol"), packaged_molecules, None, "kcal/mol").message == ""


def test_reference_frames_of_elements_the_model_lacks_are_skipped(packaged_molecules: list[Molecule],
                                                                  packaged_reference: ReferenceSet) -> None:
    """A model without N atom energies is checked on the molecules it can evaluate."""
    atomrefs = torch.zeros(100, dtype=torch.float64)
    atomrefs[[1, 6, 8]] = -10.0
    model = build_painn(16, 2, atomrefs)
    pot = potential(ScaledModel(model, KCAL_PER_MOL_PER_EV))
    diag = diagnose_force_units(pot, packaged_molecules, packaged_reference, "eV")
    assert diag.n_frames == 8 and not any(m in diag.molecules for m in ("uracil", "caffeine", "paracetamol"))


def test_validate_stops_before_md_with_exit_2(tmp_path: Path, small_set) -> None:
    model = tmp_path / "kcal_as_ev.pt"
    torch.save(ScaledModel(good(), KCAL_PER_MOL_PER_EV), model)
    result = CliRunner().invoke(app, ["validate", str(model), "--molecules", str(small_set.molecules),
                                      "--reference", str(small_set.reference), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "looks like kcal/mol" in result.stderr and "--energy-unit kcal/mol" in result.stderr
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["verdict"] == "Error" and "kcal/mol" in res["reason"]
    ok = CliRunner().invoke(app, ["validate", str(model), "--energy-unit", "kcal/mol", "--config",
                                  str(short_config(tmp_path, small_set, n_steps=20)), "--out", str(tmp_path / "ok")])
    assert ok.exit_code in (0, 1), (ok.stdout, ok.stderr)
