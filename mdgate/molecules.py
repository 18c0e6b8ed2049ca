"""Validation and reference sets, read with ASE (extxyz, ASE db, anything ``ase.io`` reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

from mdgate.errors import MoleculeSetError

DEFAULT_MOLECULES = "molecules.extxyz"
DEFAULT_REFERENCE = "reference.extxyz"


def packaged_path(name: str) -> Path:
    """Return the path of a data file shipped in ``mdgate/data``."""
    return Path(str(resources.files("mdgate") / "data" / name))


@dataclass
class Molecule:
    """One start geometry of the validation set.

    Attributes:
        name: identifier (``atoms.info['name']`` or ``['molecule']``, else the formula and index).
        atoms: the start geometry (positions in Å).
    """

    name: str
    atoms: Atoms

    @property
    def formula(self) -> str:
        """Hill formula of the molecule."""
        return self.atoms.get_chemical_formula(mode="hill")


@dataclass
class ReferenceSet:
    """Configurations with reference energies (eV) and forces (eV/Å).

    Attributes:
        frames: the configurations; each has ``energy`` and ``forces`` results.
        level_of_theory: what computed them (``atoms.info['level_of_theory']``), if declared.
        names: the molecule name of each frame.
    """

    frames: list[Atoms]
    level_of_theory: str | None
    names: list[str] = field(default_factory=list)

    def energies_eV(self) -> np.ndarray:
        """Reference energies, shape ``[n_frames]``, eV."""
        return np.array([a.get_potential_energy() for a in self.frames])

    def forces_eV_per_A(self) -> list[np.ndarray]:
        """Reference forces per frame, each ``[n_atoms, 3]``, eV/Å."""
        return [a.get_forces() for a in self.frames]


def _read_all(path: Path, what: str) -> list[Atoms]:
    if not path.exists():
        raise MoleculeSetError(f"{what} file not found: {path}")
    try:
        frames = read(str(path), index=":")
    except Exception as e:  # ASE raises many types for unreadable files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MoleculeSetError(
            f"cannot read {what} file {path} ({reason}); give an extxyz or ASE db file"
        ) from e
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise MoleculeSetError(f"{what} file {path} holds no structures")
    for i, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise MoleculeSetError(f"{what} file {path}: structure {i} has no atoms")
        if not np.all(np.isfinite(atoms.positions)):
            raise MoleculeSetError(f"{what} file {path}: structure {i} has non-finite positions")
    return frames


#: The ``atoms.info`` keys that name a molecule in a user's file, in order of preference.
NAME_KEYS = ("name", "molecule", "mol_name", "molecule_name")


def molecule_name(atoms: Atoms, default: str) -> str:
    """A structure's molecule name: the first of :data:`NAME_KEYS` in its info, else ``default``."""
    return next((str(atoms.info[k]) for k in NAME_KEYS if atoms.info.get(k)), default)


def read_molecules(path: str | Path | None = None) -> list[Molecule]:
    """Read the start geometries of a validation set (``None`` = the packaged default).

    Raises:
        MoleculeSetError: if the file is missing, unreadable, empty, or names repeat.
    """
    path = Path(path) if path is not None else packaged_path(DEFAULT_MOLECULES)
    frames = _read_all(path, "molecules")
    molecules = []
    for i, atoms in enumerate(frames):
        name = molecule_name(atoms, f"{atoms.get_chemical_formula()}_{i}")
        atoms = atoms.copy()
        atoms.calc = None
        molecules.append(Molecule(name=name, atoms=atoms))
    names = [m.name for m in molecules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MoleculeSetError(f"molecules file {path}: repeated molecule names {dupes}")
    return molecules


def read_reference(path: str | Path | None = None) -> ReferenceSet:
    """Read a reference set (``None`` = the packaged GFN2-xTB set).

    Raises:
        MoleculeSetError: if frames lack energies/forces, or the level of theory is mixed.
    """
    path = Path(path) if path is not None else packaged_path(DEFAULT_REFERENCE)
    frames = _read_all(path, "reference")
    levels = set()
    for i, atoms in enumerate(frames):
        try:
            atoms.get_potential_energy()
            forces = atoms.get_forces()
        except Exception as e:
            raise MoleculeSetError(
                f"reference file {path}: structure {i} has no energy/forces; "
                "a reference set needs both (extxyz energy= and forces columns)"
            ) from e
        if forces.shape != (len(atoms), 3):
            raise MoleculeSetError(
                f"reference file {path}: structure {i} has forces of shape {forces.shape} "
                f"for {len(atoms)} atoms"
            )
        levels.add(atoms.info.get("level_of_theory"))
    if len(levels) > 1:
        raise MoleculeSetError(f"reference file {path}: mixed levels of theory {sorted(map(str, levels))}")
    names = [molecule_name(a, a.get_chemical_formula()) for a in frames]
    return ReferenceSet(frames=frames, level_of_theory=levels.pop(), names=names)


def check_reference_matches(molecules: list[Molecule], reference: ReferenceSet) -> None:
    """Check that reference frames named like a molecule have the same atoms.

    Raises:
        MoleculeSetError: naming the molecule and both element lists.
    """
    by_name = {m.name: m for m in molecules}
    for frame, name in zip(reference.frames, reference.names, strict=True):
        mol = by_name.get(name)
        if mol is not None and list(frame.numbers) != list(mol.atoms.numbers):
            raise MoleculeSetError(
                f"reference frame of '{name}' has atoms {frame.get_chemical_formula()} but the "
                f"molecule has {mol.atoms.get_chemical_formula()}; fix the reference set"
            )
