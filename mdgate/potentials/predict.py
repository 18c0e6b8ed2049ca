"""Single-point predictions of a potential on many structures, batched, and an ASE calculator
around a potential (for ASE's optimizers).
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mdgate.md.neighbors import all_pairs
from mdgate.potentials import Potential


def predict(potential: Potential, structures: list[tuple[np.ndarray, np.ndarray]],
            batch_size: int = 32) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies and forces of ``structures`` in batches of ``batch_size``.

    Args:
        potential: the potential.
        structures: ``(atomic numbers [n], positions [n, 3] Å)`` per structure.
        batch_size: structures per model call.

    Returns:
        Energies ``[n_structures]`` (eV) and forces ``[n, 3]`` (eV/Å) per structure, float64.
    """
    dev = potential.device
    energies: list[np.ndarray] = []
    forces: list[np.ndarray] = []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start:start + batch_size]
        sizes = [len(z) for z, _ in chunk]
        numbers = torch.as_tensor(np.concatenate([z for z, _ in chunk]), device=dev)
        pos = torch.as_tensor(np.concatenate([x for _, x in chunk]), dtype=torch.float64, device=dev)
        sys_idx = torch.as_tensor(np.repeat(np.arange(len(chunk)), sizes), device=dev)
        i, j = all_pairs(sys_idx)
        if potential.cutoff_A is not None:
            keep = (pos[i] - pos[j]).norm(dim=1) < potential.cutoff_A
            i, j = i[keep], j[keep]
        e, f = potential(numbers, pos, sys_idx, len(chunk), i, j)
        energies.append(e.detach().cpu().numpy())
        f_np = f.detach().cpu().numpy()
        offsets = np.cumsum([0, *sizes])
        forces += [f_np[offsets[k]:offsets[k + 1]] for k in range(len(chunk))]
    return np.concatenate(energies) if energies else np.zeros(0), forces


def predict_atoms(potential: Potential, frames: list[Atoms],
                  batch_size: int = 32) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`predict` for ASE ``Atoms``."""
    return predict(potential, [(a.numbers, a.positions) for a in frames], batch_size)


class PotentialCalculator(Calculator):
    """An ASE calculator (energy, forces) around a :class:`~mdgate.potentials.Potential`."""

    implemented_properties = ["energy", "forces"]  # noqa: RUF012 (ASE's own class attribute)

    def __init__(self, potential: Potential):
        super().__init__()
        self.potential = potential

    def calculate(self, atoms: Atoms | None = None, properties: list[str] | None = None,
                  system_changes: list[str] = all_changes) -> None:
        """Evaluate the potential on ``atoms``."""
        super().calculate(atoms, properties or ["energy"], system_changes)
        assert self.atoms is not None
        [e], [f] = predict(self.potential, [(self.atoms.numbers, self.atoms.positions)])
        self.results = {"energy": float(e), "forces": f}
