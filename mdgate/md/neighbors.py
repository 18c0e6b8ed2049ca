"""Neighbour pairs for batches of isolated molecules, reused between steps with a skin."""

from __future__ import annotations

import torch


def all_pairs(system_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs ``i != j`` of atoms in the same molecule.

    Args:
        system_idx: molecule index of each atom, ``[n_atoms]``, sorted ascending.

    Returns:
        ``idx_i``, ``idx_j``: ``[n_pairs]`` long tensors on the device of ``system_idx``.
    """
    counts = torch.bincount(system_idx).tolist()
    starts = [0]
    for c in counts[:-1]:
        starts.append(starts[-1] + c)
    ii, jj = [], []
    for start, n in zip(starts, counts, strict=True):
        if n < 2:
            continue
        r = torch.arange(start, start + n, device=system_idx.device)
        i, j = torch.meshgrid(r, r, indexing="ij")
        mask = i != j
        ii.append(i[mask])
        jj.append(j[mask])
    if not ii:
        empty = torch.zeros(0, dtype=torch.long, device=system_idx.device)
        return empty, empty
    return torch.cat(ii), torch.cat(jj)


class NeighborList:
    """Pairs within ``cutoff_A + skin_A``, rebuilt only when an atom moved more than skin/2.

    Including pairs between the cutoff and cutoff + skin is exact for models whose cutoff
    function is zero beyond the cutoff (schnetpack's CosineCutoff and friends). With no cutoff
    all intra-molecular pairs are used.

    Args:
        system_idx: molecule index of each atom, ``[n_atoms]``, sorted.
        cutoff_A: model cutoff in Å, or ``None`` for all pairs.
        skin_A: Verlet skin in Å.
    """

    def __init__(self, system_idx: torch.Tensor, cutoff_A: float | None, skin_A: float = 1.0):
        self.system_idx = system_idx
        self.cand_i, self.cand_j = all_pairs(system_idx)
        self.cutoff_A = cutoff_A
        self.skin_A = skin_A
        self._cand = torch.stack([self.cand_i, self.cand_j])
        self._reach2 = float("inf") if cutoff_A is None else (cutoff_A + skin_A) ** 2
        self.n_builds = 0
        self._ref: torch.Tensor | None = None
        self._pairs = (self.cand_i, self.cand_j)
        self._last: torch.Tensor | None = None

    def update(self, positions_A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the pairs for ``positions_A`` (``[n_atoms, 3]``, Å), rebuilding if needed.

        Asked twice for the same tensor (the MD loop's record step after its force call), it
        returns the same pairs without recomputing them: positions are never changed in place.
        """
        if self.cutoff_A is None or positions_A is self._last:
            return self._pairs
        if self._ref is not None and self.skin_A > 0:
            moved = (positions_A - self._ref).norm(dim=1).max()
            if bool(moved <= 0.5 * self.skin_A):
                return self._pairs
        r = positions_A[self.cand_i] - positions_A[self.cand_j]
        cand = self._cand[:, (r * r).sum(1) < self._reach2]
        self._pairs = (cand[0], cand[1])
        self._last = positions_A  # asked again for the same positions (the record step): same pairs
        self._ref = positions_A.detach().clone() if self.skin_A > 0 else positions_A
        self.n_builds += 1
        return self._pairs
