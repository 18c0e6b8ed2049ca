"""Generate mdgate's shipped molecule sets with GFN2-xTB (tblite) on RDKit geometries.

Writes, with fixed seeds so a rerun reproduces them:

* ``mdgate/data/molecules.extxyz``: one GFN2-xTB-optimised start geometry per molecule;
* ``mdgate/data/reference.extxyz``: >= 50 configurations per molecule sampled from Langevin MD
  at 500 K, with GFN2-xTB energies (eV) and forces (eV/Å) — the accuracy reference set;
* ``scripts/data/train.extxyz``: a disjoint training set (another seed) for the example models.

Usage: ``.venv/bin/python scripts/make_molecule_set.py [--n-reference 50] [--n-train 200]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.optimize import BFGS

# The MD17 molecules (Chmiela et al., Sci. Adv. 2017) plus caffeine for the benchmark.
MOLECULES: dict[str, str] = {
    "ethanol": "CCO",
    "malonaldehyde": "O=CCC=O",
    "toluene": "Cc1ccccc1",
    "uracil": "O=c1cc[nH]c(=O)[nH]1",
    "naphthalene": "c1ccc2ccccc2c1",
    "salicylic_acid": "OC(=O)c1ccccc1O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "azobenzene": "c1ccc(cc1)/N=N/c1ccccc1",
}
LEVEL_OF_THEORY = "GFN2-xTB"
ROOT = Path(__file__).resolve().parents[1]


def embed(smiles: str, seed: int) -> Atoms:
    """Build a 3D geometry with RDKit (ETKDG + MMFF), deterministic for a seed."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise RuntimeError(f"RDKit could not embed {smiles}")
    AllChem.MMFFOptimizeMolecule(mol)
    conf = mol.GetConformer()
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    positions = np.array(conf.GetPositions())
    atoms = Atoms(numbers=numbers, positions=positions - positions.mean(axis=0))
    atoms.info["n_bonds_rdkit"] = mol.GetNumBonds()
    return atoms


def xtb() -> object:
    """A GFN2-xTB calculator (tblite)."""
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def labelled(atoms: Atoms, name: str, smiles: str) -> Atoms:
    """A copy of ``atoms`` carrying its energy/forces as a single-point result and metadata."""
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    copy = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
    copy.calc = SinglePointCalculator(copy, energy=energy, forces=forces)
    copy.info.update(name=name, smiles=smiles, level_of_theory=LEVEL_OF_THEORY)
    return copy


def sample(start: Atoms, n: int, every: int, seed: int, name: str, smiles: str,
           temperature_K: float = 500.0) -> list[Atoms]:
    """Langevin MD at ``temperature_K`` (0.5 fs, friction 0.01/fs), ``n`` frames ``every`` steps apart."""
    atoms = start.copy()
    atoms.calc = xtb()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature_K, friction=0.01 / units.fs, rng=rng)
    dyn.run(200)  # equilibrate
    frames = []
    for _ in range(n):
        dyn.run(every)
        frames.append(labelled(atoms, name, smiles))
    return frames


def main() -> None:
    """Write the molecule, reference and training sets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-reference", type=int, default=50)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--only", nargs="*", help="subset of molecule names")
    args = parser.parse_args()
    names = args.only or list(MOLECULES)
    starts, reference, train = [], [], []
    for k, name in enumerate(names):
        smiles = MOLECULES[name]
        t0 = time.perf_counter()
        atoms = embed(smiles, seed=42)
        n_bonds = atoms.info.pop("n_bonds_rdkit")
        atoms.calc = xtb()
        BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
        start = labelled(atoms, name, smiles)
        start.info["n_bonds"] = n_bonds
        starts.append(start)
        reference += sample(atoms, args.n_reference, 20, seed=1000 + k, name=name, smiles=smiles)
        if args.n_train:
            train += sample(atoms, args.n_train, 10, seed=2000 + k, name=name, smiles=smiles)
        print(f"{name}: {len(atoms)} atoms, done in {time.perf_counter() - t0:.1f} s", flush=True)
    data = ROOT / "mdgate" / "data"
    data.mkdir(parents=True, exist_ok=True)
    write(data / "molecules.extxyz", starts, format="extxyz")
    write(data / "reference.extxyz", reference, format="extxyz")
    if train:
        (ROOT / "scripts" / "data").mkdir(exist_ok=True)
        write(ROOT / "scripts" / "data" / "train.extxyz", train, format="extxyz")


if __name__ == "__main__":
    main()
