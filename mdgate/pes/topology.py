"""Bonds, rotatable bonds and conformer embeddings of a molecule, with RDKit.

A molecule's topology comes from its SMILES (``atoms.info['smiles']``) where it has one, else
from its geometry (RDKit's bond perception, neutral molecule). Conformers are ETKDG embeddings
of that topology; their atom order is the topology's, not necessarily the start geometry's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from mdgate.errors import MoleculeSetError

#: Added to the configured seed (RDKit's seed 0 gives identical embeddings).
SEED_OFFSET = 61453
#: Embeddings closer than this (Å, RMSD after alignment) are one start.
PRUNE_RMSD_A = 0.1


@dataclass(frozen=True)
class Topology:
    """Atoms and bonds of a molecule.

    Attributes:
        numbers: atomic numbers, in the topology's atom order.
        bonds: covalent bonds ``(i, j)``, ``i < j``.
        rotors: rotatable bonds ``(j, k)``: single, not in a ring, both atoms bonded to
            something else (methyl and hydroxyl rotors included).
        source: ``smiles`` or ``geometry``.
        mol: the RDKit molecule (with hydrogens), for embedding.
    """

    numbers: np.ndarray
    bonds: tuple[tuple[int, int], ...]
    rotors: tuple[tuple[int, int], ...]
    source: str
    mol: object

    def moving_side(self, rotor: tuple[int, int]) -> np.ndarray:
        """The atoms on ``rotor[1]``'s side of the bond (the side a torsion scan turns)."""
        j, k = rotor
        neighbours: dict[int, list[int]] = {a: [] for a in range(len(self.numbers))}
        for a, b in self.bonds:
            neighbours[a].append(b)
            neighbours[b].append(a)
        seen, todo = {k}, [k]
        while todo:
            a = todo.pop()
            for b in neighbours[a]:
                if b not in seen and not (a == k and b == j):
                    seen.add(b)
                    todo.append(b)
        return np.array(sorted(seen))

    def bonded(self, positions: np.ndarray, factor: float = 1.3) -> bool:
        """Whether ``positions`` keep exactly this topology's bonds (distances within ``factor``
        × the sum of covalent radii).
        """
        r = covalent_radii[self.numbers]
        d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        close = d < factor * (r[:, None] + r[None])
        np.fill_diagonal(close, False)
        found = {(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu(close)), strict=True)}
        return found == set(self.bonds)


def rdkit(module: str) -> Any:
    """An RDKit module, untyped (its stubs leave out most of what the C++ modules export)."""
    import importlib

    return importlib.import_module(f"rdkit.{module}")


def _rotors(mol: Any) -> tuple[tuple[int, int], ...]:
    Chem = rdkit("Chem")

    out: list[tuple[int, int]] = []
    for bond in mol.GetBonds():
        if bond.GetBondType() != Chem.BondType.SINGLE or bond.IsInRing():
            continue
        a, b = bond.GetBeginAtom(), bond.GetEndAtom()
        if a.GetDegree() < 2 or b.GetDegree() < 2:
            continue
        # A bond next to a triple bond or an allene turns nothing (linear).
        if any(x.GetHybridization() == Chem.HybridizationType.SP for x in (a, b)):
            continue
        out.append((min(a.GetIdx(), b.GetIdx()), max(a.GetIdx(), b.GetIdx())))
    return tuple(out)


def topology(atoms: Atoms, name: str) -> Topology:
    """The topology of a molecule: from ``atoms.info['smiles']``, else perceived from the geometry.

    Raises:
        MoleculeSetError: the SMILES does not parse or does not match the atoms' formula, or bonds
            cannot be perceived from the geometry.
    """
    Chem = rdkit("Chem")
    rdkit("RDLogger").DisableLog("rdApp.*")
    smiles = atoms.info.get("smiles")
    if smiles:
        mol = Chem.MolFromSmiles(str(smiles))
        if mol is None:
            raise MoleculeSetError(f"molecule {name}: smiles {smiles!r} does not parse")
        mol = Chem.AddHs(mol)
        source = "smiles"
        formula = sorted(a.GetAtomicNum() for a in mol.GetAtoms())
        if formula != sorted(int(z) for z in atoms.numbers):
            raise MoleculeSetError(f"molecule {name}: smiles {smiles!r} does not match its atoms "
                                   f"({atoms.get_chemical_formula()})")
    else:
        rdDetermineBonds = rdkit("Chem.rdDetermineBonds")
        block = f"{len(atoms)}\n\n" + "\n".join(
            f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions,
                                                                     strict=True))
        mol = Chem.MolFromXYZBlock(block)
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=0)
        except Exception as e:  # RDKit raises ValueError or its own types
            raise MoleculeSetError(f"molecule {name}: no smiles, and bonds cannot be perceived from the geometry "
                                   f"({type(e).__name__}); add smiles= to the molecule's info") from e
        source = "geometry"
    bonds = tuple(sorted(tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()))
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return Topology(numbers, bonds, _rotors(mol), source, mol)


def dihedral(topo: Topology, rotor: tuple[int, int]) -> tuple[int, int, int, int]:
    """Four atoms ``(i, j, k, l)`` that define the torsion about ``rotor = (j, k)`` (heavy
    neighbours preferred).
    """
    j, k = rotor

    def neighbour(a: int, other: int) -> int:
        near = [b for bond in topo.bonds for b in bond if a in bond and b not in (a, other)]
        return max(near, key=lambda b: (topo.numbers[b] > 1, -b))

    return neighbour(j, k), j, k, neighbour(k, j)


#: Two MMFF minima closer in energy than this (kcal/mol) are taken as one start.
MMFF_DISTINCT_KCAL = 0.05


def embed(topo: Topology, n: int, seed: int) -> list[np.ndarray]:
    """Up to ``n`` ETKDG conformers of ``topo`` (positions ``[n_atoms, 3]`` Å), relaxed with MMFF
    where RDKit has parameters and then one per MMFF energy level (so a rigid molecule costs the
    oracle one relaxation, not ``n``).
    """
    Chem, AllChem = rdkit("Chem"), rdkit("Chem.AllChem")
    mol = Chem.Mol(topo.mol)
    mol.RemoveAllConformers()
    params = AllChem.ETKDGv3()
    params.randomSeed = SEED_OFFSET + seed  # RDKit: seed 0 embeds one conformer n times
    params.pruneRmsThresh = PRUNE_RMSD_A
    params.onlyHeavyAtomsForRMS = False  # OH and NH rotamers are conformers too
    params.useSymmetryForPruning = False  # (with it, every ethanol rotamer is pruned to one)
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    positions = [np.array(mol.GetConformer(i).GetPositions(), float) for i in ids]
    if not ids or not AllChem.MMFFHasAllMoleculeParams(mol):
        return positions
    results = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=1000)
    out: list[tuple[float, np.ndarray]] = []
    for i, (_, energy) in zip(ids, results, strict=True):
        if all(abs(energy - e) > MMFF_DISTINCT_KCAL for e, _ in out):
            out.append((energy, np.array(mol.GetConformer(i).GetPositions(), float)))
    return [x for _, x in sorted(out, key=lambda t: t[0])]
