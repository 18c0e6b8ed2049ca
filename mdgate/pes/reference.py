"""The oracle's side of the landscape, which does not depend on the candidate: unique conformer
minima relaxed by the oracle, rigid torsion profiles at the lowest minimum, and its harmonic
frequencies there. Computed once per (molecule, oracle, settings) and cached as JSON, so a gate
pays for it once per molecule set, not once per candidate.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from ase.constraints import FixInternals
from ase.optimize import BFGS

from mdgate.errors import MdgateError
from mdgate.pes.topology import Topology, dihedral, embed, topology
from mdgate.pes.vibrations import harmonic

if TYPE_CHECKING:
    from mdgate.config import PesSettings
    from mdgate.molecules import Molecule
    from mdgate.stages.oracle import Oracle

#: Bumped when what is cached changes meaning.
CACHE_VERSION = 1


@dataclass
class PesReference:
    """The oracle's landscape of one molecule (positions in Å, energies in eV).

    Attributes:
        numbers: atomic numbers in the topology's order (conformers and scans use it).
        source: where the bonds came from (``smiles`` or ``geometry``).
        conformers: unique minima, lowest oracle energy first.
        conformer_energies_eV: their oracle energies.
        n_embedded: embeddings tried; ``n_relaxed``: those the oracle relaxed without changing bonds.
        rotors: the rotatable bonds scanned, and ``dihedrals`` the four atoms of each torsion.
        torsion_angles_deg: the scan's angles (0 = the lowest minimum).
        torsion_geometries: per rotor, the oracle's relaxed geometry at each angle (the torsion
            held fixed, everything else relaxed).
        torsion_energies_eV: the oracle's energy at each of them.
        frequencies_cm1: the oracle's harmonic wavenumbers at the lowest minimum (negative: imaginary).
        seconds: what computing it took.
    """

    numbers: list[int]
    source: str
    conformers: list[list[list[float]]]
    conformer_energies_eV: list[float]
    n_embedded: int
    n_relaxed: int
    rotors: list[list[int]] = field(default_factory=list)
    dihedrals: list[list[int]] = field(default_factory=list)
    torsion_angles_deg: list[float] = field(default_factory=list)
    torsion_geometries: list[list[list[list[float]]]] = field(default_factory=list)
    torsion_energies_eV: list[list[float]] = field(default_factory=list)
    frequencies_cm1: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False

    @property
    def z(self) -> np.ndarray:
        """Atomic numbers as an array."""
        return np.array(self.numbers)

    def minimum(self, k: int = 0) -> np.ndarray:
        """Positions of conformer ``k`` (0: the lowest)."""
        return np.array(self.conformers[k])


def torsion_structures(ref: PesReference) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every relaxed-scan structure, rotor by rotor, angle by angle."""
    return [(ref.z, np.array(x)) for scan in ref.torsion_geometries for x in scan]


def relaxed_scan(oracle: Oracle, topo: Topology, x0: np.ndarray, rotor: tuple[int, int],
                 settings: PesSettings) -> tuple[list[np.ndarray], list[float], tuple[int, int, int, int]]:
    """A relaxed torsion scan on the oracle: the torsion about ``rotor`` set to each angle (the
    moving side turned from the previous point's geometry), held fixed, everything else relaxed.
    """
    i, j, k, m = dihedral(topo, rotor)
    atoms = Atoms(numbers=topo.numbers, positions=x0)
    atoms.calc = oracle.calculator()
    phi0 = atoms.get_dihedral(i, j, k, m)
    moving = topo.moving_side(rotor)
    geometries, energies = [], []
    for angle in np.arange(0.0, 360.0, settings.torsion_step_deg):
        atoms.set_constraint()
        atoms.set_dihedral(i, j, k, m, (phi0 + angle) % 360.0, indices=moving)
        atoms.set_constraint(FixInternals(dihedrals_deg=[[atoms.get_dihedral(i, j, k, m), [i, j, k, m]]]))
        try:
            BFGS(atoms, logfile=None, maxstep=0.1).run(fmax=settings.torsion_fmax_eV_per_A,
                                                        steps=settings.torsion_max_steps)
            energies.append(float(atoms.get_potential_energy()))
        except Exception as e:  # an SCF that does not converge
            oracle.failures.append(f"torsion scan: {type(e).__name__}: {str(e)[:80]}")
            energies.append(float("nan"))
        geometries.append(atoms.positions.copy())
    return geometries, energies, (i, j, k, m)


def cache_dir(settings: PesSettings) -> Path:
    """Where oracle landscapes are cached: ``pes.cache_dir``, else ``$MDGATE_CACHE_DIR/pes``, else
    ``~/.cache/mdgate/pes``.
    """
    if settings.cache_dir is not None:
        return Path(settings.cache_dir)
    root = os.environ.get("MDGATE_CACHE_DIR")
    return Path(root) / "pes" if root else Path.home() / ".cache" / "mdgate" / "pes"


def cache_key(mol: Molecule, oracle: Oracle, settings: PesSettings) -> str:
    """What the oracle's landscape of ``mol`` depends on, hashed."""
    what = {"version": CACHE_VERSION, "oracle": oracle.name, "level": oracle.level_of_theory,
            "oracle_kwargs": oracle.key, "numbers": mol.atoms.numbers.tolist(),
            "positions": np.round(mol.atoms.positions, 4).tolist(), "smiles": mol.atoms.info.get("smiles"),
            "settings": settings.model_dump(mode="json", include=REFERENCE_SETTINGS)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


#: The settings the oracle's side depends on (the cache key's part of them).
REFERENCE_SETTINGS = {"n_conformers", "seed", "oracle_fmax_eV_per_A", "oracle_max_steps", "distinct_meV",
                      "torsion_step_deg", "torsion_fmax_eV_per_A", "torsion_max_steps", "hessian_step_A"}


def _relax(oracle: Oracle, z: np.ndarray, x: np.ndarray, settings: PesSettings) -> tuple[np.ndarray, float] | None:
    atoms = Atoms(numbers=z, positions=x)
    atoms.calc = oracle.calculator()
    try:
        BFGS(atoms, logfile=None, maxstep=0.1).run(fmax=settings.oracle_fmax_eV_per_A, steps=settings.oracle_max_steps)
        return atoms.positions.copy(), float(atoms.get_potential_energy())
    except Exception as e:  # an embedding the oracle's SCF cannot converge on
        oracle.failures.append(f"relaxation: {type(e).__name__}: {str(e)[:80]}")
        return None


def unique_minima(minima: list[tuple[np.ndarray, float]], distinct_meV: float) -> list[tuple[np.ndarray, float]]:
    """Minima sorted by energy, one per energy level (``distinct_meV`` apart)."""
    out: list[tuple[np.ndarray, float]] = []
    for x, e in sorted(minima, key=lambda m: m[1]):
        if all(abs(e - e2) * 1000 > distinct_meV for _, e2 in out):
            out.append((x, e))
    return out


def compute_reference(mol: Molecule, topo: Topology, oracle: Oracle, settings: PesSettings) -> PesReference:
    """The oracle's landscape of ``mol`` with topology ``topo`` (see the module docstring); no cache.

    Raises:
        MdgateError: the oracle relaxed no embedding without changing the molecule's bonds.
    """
    t0 = time.perf_counter()
    starts = embed(topo, settings.n_conformers, settings.seed)
    relaxed = [r for x in starts if (r := _relax(oracle, topo.numbers, x, settings)) is not None]
    kept = [r for r in relaxed if topo.bonded(r[0])]
    minima = unique_minima(kept, settings.distinct_meV)
    if not minima:
        raise MdgateError(f"the oracle relaxed none of {len(starts)} conformer embeddings of {mol.name} "
                         f"without changing its bonds ({'; '.join(oracle.failures[-2:])})")
    ref = PesReference(numbers=topo.numbers.tolist(), source=topo.source,
                       conformers=[x.tolist() for x, _ in minima], conformer_energies_eV=[e for _, e in minima],
                       n_embedded=len(starts), n_relaxed=len(kept), rotors=[list(r) for r in topo.rotors],
                       torsion_angles_deg=np.arange(0.0, 360.0, settings.torsion_step_deg).tolist())
    for rotor in topo.rotors:
        geometries, energies, quad = relaxed_scan(oracle, topo, ref.minimum(), rotor, settings)
        ref.dihedrals.append(list(quad))
        ref.torsion_geometries.append([np.round(x, 5).tolist() for x in geometries])
        ref.torsion_energies_eV.append(energies)

    def forces(structures: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return oracle.evaluate(structures)[1]

    ref.frequencies_cm1 = harmonic(ref.z, ref.minimum(), forces, settings.hessian_step_A).tolist()
    ref.seconds = time.perf_counter() - t0
    return ref


#: The oracle's landscape of the packaged molecule set under the default settings, shipped so
#: that the default protocol never pays for it (``scripts/make_pes_reference.py`` writes it).
PACKAGED = "pes_reference.json.gz"


@lru_cache(maxsize=1)
def _packaged() -> dict[str, dict[str, Any]]:
    from mdgate.molecules import packaged_path

    path = packaged_path(PACKAGED)
    if not path.exists():
        return {}
    with gzip.open(path, "rt") as f:
        return json.load(f)


def reference(mol: Molecule, oracle: Oracle, settings: PesSettings) -> PesReference:
    """The oracle's landscape of ``mol``: shipped with the package, or cached, or else computed and
    cached (an oracle with no stable key, such as a parent model, is never cached).
    """
    if oracle.key is None:
        return compute_reference(mol, topology(mol.atoms, mol.name), oracle, settings)
    key = cache_key(mol, oracle, settings)
    if key in _packaged():
        return PesReference(**{**_packaged()[key], "cached": True})
    path = cache_dir(settings) / f"{mol.name}-{key}.json"
    if path.exists():
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return PesReference(**{**data, "cached": True})
        except (ValueError, TypeError):
            pass  # a truncated or older file: recompute
    ref = compute_reference(mol, topology(mol.atoms, mol.name), oracle, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(ref)))
    tmp.replace(path)
    return ref
