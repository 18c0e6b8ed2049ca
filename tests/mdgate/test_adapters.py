"""Adapters behind ``Potential`` and the one entry point ``mdgate.potentials.load``: schnetpack
numbers unchanged, any ASE calculator per molecule with its units converted from the descriptor,
loaders called with their kwargs, weights and device, and element coverage checked by molecule.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

from mdgate.errors import MetadataError, ModelInterfaceError, ModelLoadError
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta, load
from mdgate.potentials.adapters import AsePotential
from mdgate.potentials.descriptor import parse_descriptor
from mdgate.potentials.loading import check_coverage, model_cutoff_A, uncovered
from mdgate.potentials.predict import predict
from mdgate.potentials.schnetpack import SchnetpackPotential, load_potential
from tests.models import GOOD_MODEL, MODEL_META

HERE = "tests.mdgate.test_adapters"
#: Lennard-Jones in eV and Å: the reference the converted calculators must reproduce.
SIGMA_A, EPSILON_EV, RC_A = 1.1, 0.01, 4.0
CALLS: list[dict[str, Any]] = []


def lj_calculator(energy_unit: str = "eV", length_unit: str = "Angstrom") -> Calculator:
    """The same Lennard-Jones potential expressed in other units (positions in, energies out)."""
    e = {"eV": 1.0, "kcal/mol": units.kcal / units.mol, "Hartree": units.Hartree}[energy_unit]
    length = {"Angstrom": 1.0, "Bohr": units.Bohr}[length_unit]
    return LennardJones(sigma=SIGMA_A / length, epsilon=EPSILON_EV / e, rc=RC_A / length)


def recording_loader(weights: list[str], device: str, scale: float = 1.0) -> Calculator:
    """Records its arguments."""
    CALLS.append({"weights": weights, "device": device, "scale": scale})
    return lj_calculator()


def failing_loader() -> Calculator:
    raise RuntimeError("weights are corrupt")


class EnergyOnly(Calculator):
    """A calculator with an energy and no forces."""

    implemented_properties = ["energy"]  # noqa: RUF012 (ASE's class attribute)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        """Zero."""
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0}


def energy_only() -> Calculator:
    return EnergyOnly()


def ase_descriptor(root: Path | None = None, **fields: Any):
    data = {"framework": "ase", "loader": f"{HERE}:lj_calculator", "energy_unit": "eV", "length_unit": "Angstrom",
            "cutoff_A": RC_A, **fields}
    return parse_descriptor(data, "test descriptor", root)


@pytest.fixture(scope="module")
def three(packaged_molecules: list[Molecule]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three molecules of different sizes."""
    return [(m.atoms.numbers, m.atoms.positions) for m in packaged_molecules[:3]]


def reference(structures: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[float], list[np.ndarray]]:
    energies, forces = [], []
    for z, x in structures:
        atoms = Atoms(numbers=z, positions=x, calculator=lj_calculator())
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return energies, forces


def test_schnetpack_models_load_as_today_with_the_same_numbers(three) -> None:
    today = load_potential(GOOD_MODEL, ModelMeta(**MODEL_META), "cpu")
    now = load(GOOD_MODEL, device="cpu")
    assert isinstance(now, SchnetpackPotential)
    assert now.meta.model_dump() == today.meta.model_dump()
    e0, f0 = predict(today, three)
    e1, f1 = predict(now, three)
    assert np.array_equal(e0, e1) and all(np.array_equal(a, b) for a, b in zip(f0, f1, strict=True))
    assert model_cutoff_A(now) == 5.0


@pytest.mark.parametrize(("energy_unit", "length_unit"), [("eV", "Angstrom"), ("kcal/mol", "Bohr"),
                                                          ("Hartree", "Bohr")])
def test_an_ase_calculator_in_any_units_gives_eV_and_eV_per_A(three, energy_unit, length_unit) -> None:
    d = ase_descriptor(kwargs={"energy_unit": energy_unit, "length_unit": length_unit},
                       energy_unit=energy_unit, length_unit=length_unit)
    pot = load(d, device="cpu")
    assert isinstance(pot, AsePotential) and pot.cutoff_A == RC_A and model_cutoff_A(pot) is None
    energies, forces = predict(pot, three)
    e_ref, f_ref = reference(three)
    np.testing.assert_allclose(energies, e_ref, rtol=1e-10)
    for f, g in zip(forces, f_ref, strict=True):
        np.testing.assert_allclose(f, g, rtol=1e-10, atol=1e-12)


def test_the_ase_adapter_splits_the_batch_by_molecule(three) -> None:
    pot = load(ase_descriptor(), device="cpu")
    together = predict(pot, three, batch_size=3)
    alone = predict(pot, three, batch_size=1)
    assert np.array_equal(together[0], alone[0])
    assert all(np.array_equal(a, b) for a, b in zip(together[1], alone[1], strict=True))
    z, x = three[0]
    e, f = pot(torch.as_tensor(z), torch.as_tensor(x), torch.zeros(len(z), dtype=torch.long), 1,
               torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert e.dtype == f.dtype == torch.float64 and tuple(f.shape) == (len(z), 3)


def test_the_loader_gets_kwargs_absolute_weights_and_the_device(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"w")
    d = ase_descriptor(tmp_path, loader=f"{HERE}:recording_loader", kwargs={"scale": 2.0}, weights=["w.bin"])
    CALLS.clear()
    load(d, device="cpu")
    assert CALLS == [{"weights": [str((tmp_path / "w.bin").resolve())], "device": "cpu", "scale": 2.0}]


@pytest.mark.parametrize(("fields", "message"), [
    ({"loader": "no_such_module_xyz:make"}, "field 'loader' = 'no_such_module_xyz:make': cannot import "
                                            "no_such_module_xyz"),
    ({"loader": f"{HERE}:nothing_here"}, f"field 'loader' = '{HERE}:nothing_here': {HERE} has no nothing_here"),
    ({"loader": f"{HERE}:SIGMA_A"}, "SIGMA_A is a float, not callable"),
    ({"kwargs": {"colour": "red"}}, "takes no argument(s) ['colour'] (it takes ['energy_unit', 'length_unit'])"),
    ({"loader": f"{HERE}:failing_loader"}, "failing_loader failed (RuntimeError: weights are corrupt)"),
])
def test_loader_problems_are_load_errors_that_name_the_loader(fields: dict, message: str) -> None:
    with pytest.raises(ModelLoadError) as e:
        load(ase_descriptor(**fields), device="cpu")
    assert message in str(e.value)


def test_a_calculator_without_forces_is_refused() -> None:
    with pytest.raises(ModelInterfaceError, match=r"EnergyOnly does not implement \['forces'\]"):
        load(ase_descriptor(loader=f"{HERE}:energy_only"), device="cpu")


def test_descriptor_files_load_and_explicit_metadata_must_agree(tmp_path: Path) -> None:
    (tmp_path / "mdgate.yaml").write_text(
        f"framework: ase\nloader: {HERE}:lj_calculator\nenergy_unit: eV\nlength_unit: Angstrom\n"
        "level_of_theory: LJ\ncutoff_A: 4.0\n")
    pot = load(tmp_path, device="cpu", meta=ModelMeta(parent="lj/1"))
    assert pot.meta.level_of_theory == "LJ" and pot.meta.parent == "lj/1"
    with pytest.raises(MetadataError, match=r"the descriptor says cutoff_A = 4\.0"):
        load(tmp_path, device="cpu", meta=ModelMeta(cutoff_A=5.0))


# --------------------------------------------------------------------------- element coverage

def chloroethane() -> Molecule:
    return Molecule("chloroethane", molecule("CH3CH2Cl"))


def test_coverage_names_the_molecule_and_the_element(packaged_molecules: list[Molecule]) -> None:
    d = ase_descriptor(elements=["H", "C", "N", "O"])
    mols = [*packaged_molecules[:2], chloroethane()]
    assert uncovered(d, mols) == {"chloroethane": ["Cl"]}
    message = "elements outside the model's coverage: molecule chloroethane (C2H5Cl) has Cl (it covers H, C, N, O)"
    with pytest.raises(ModelInterfaceError, match=re.escape(message)):
        check_coverage(d, mols)
    with pytest.raises(ModelInterfaceError, match="chloroethane"):
        check_coverage(load(d, device="cpu"), mols)
    check_coverage(d, packaged_molecules)
    check_coverage(ase_descriptor(), mols)  # nothing declared: nothing to check


def test_coverage_of_a_schnetpack_model_comes_from_its_atom_references(packaged_molecules: list[Molecule]) -> None:
    pot = load(GOOD_MODEL, device="cpu")
    mols = [packaged_molecules[0], chloroethane()]
    assert uncovered(pot, mols) == {"chloroethane": ["Cl"]}
    with pytest.raises(ModelInterfaceError, match=r"molecule chloroethane \(C2H5Cl\) has Cl$"):
        check_coverage(pot, mols)
