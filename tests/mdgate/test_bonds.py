"""Bond detection: every covalent bond of the packaged molecules, C–H included."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.neighborlist import natural_cutoffs, neighbor_list

from mdgate.md.initial import BOND_CUTOFF_MULT, find_bonds
from mdgate.molecules import Molecule


def test_find_bonds_finds_every_rdkit_bond_of_every_packaged_molecule(
        packaged_molecules: list[Molecule]) -> None:
    assert len(packaged_molecules) == 10
    for mol in packaged_molecules:
        bonds = find_bonds(mol.atoms)
        assert len(bonds) == int(mol.atoms.info["n_bonds"]), mol.name
        assert np.all(bonds[:, 0] < bonds[:, 1])
        degree = np.bincount(bonds.ravel(), minlength=len(mol.atoms))
        h = mol.atoms.numbers == 1
        assert np.all(degree[h] == 1), f"{mol.name}: an H without exactly one bond"
        assert np.all(degree > 0), f"{mol.name}: an atom without bonds"
        # Every H is bound to its nearest neighbour.
        d = mol.atoms.get_all_distances()
        np.fill_diagonal(d, np.inf)
        for a, b in bonds:
            for hydrogen, partner in ((a, b), (b, a)):
                if h[hydrogen]:
                    assert partner == np.argmin(d[hydrogen]), mol.name


def test_skinless_natural_cutoffs_drop_c_h_bonds_which_is_why_the_multiplier_exists(
        packaged_molecules: list[Molecule]) -> None:
    # The covalent radii of C and H (0.76 + 0.31 Å) sum to less than a C–H bond (~1.09 Å).
    missed_ch = 0
    for mol in packaged_molecules:
        atoms = mol.atoms
        i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms))
        plain = {(a, b) for a, b in zip(i, j, strict=True) if a < b}
        found = {tuple(b) for b in find_bonds(atoms).tolist()}
        assert plain < found, mol.name  # the plain list only ever loses bonds
        z = atoms.numbers
        missed_ch += sum(1 for a, b in found - plain if {z[a], z[b]} == {1, 6})
    assert missed_ch > 0
    methane = molecule("CH4")
    assert len(neighbor_list("i", methane, natural_cutoffs(methane))) == 0
    assert len(find_bonds(methane)) == 4
    assert BOND_CUTOFF_MULT > 1.09 / 1.07


def test_non_bonded_neighbours_are_not_bonds() -> None:
    # Water: two O–H bonds; the H···H distance (1.5 Å) is no bond.
    water = molecule("H2O")
    assert find_bonds(water).tolist() == [[0, 1], [0, 2]]
    # Two methanes 3 Å apart: no bond between them.
    pair = molecule("CH4")
    other = molecule("CH4")
    other.translate([3.0, 0.0, 0.0])
    pair += other
    bonds = find_bonds(pair)
    assert len(bonds) == 8
    assert not np.any((bonds[:, 0] < 5) & (bonds[:, 1] >= 5))


@pytest.mark.parametrize("name", ["C2H2", "C6H6", "CH3CH2OH"])
def test_find_bonds_on_ase_molecules(name: str) -> None:
    expected = {"C2H2": 3, "C6H6": 12, "CH3CH2OH": 8}[name]
    assert len(find_bonds(molecule(name))) == expected
