"""Potentials: a loaded model turned into a batched energy-and-forces function.

The engine only needs :class:`Potential`. :func:`load` is the one way to get one: from a model
descriptor (:mod:`mdgate.potentials.descriptor`) or a schnetpack model, through the adapter of its
framework (:mod:`mdgate.potentials.schnetpack`, :mod:`mdgate.potentials.adapters`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from mdgate.errors import MetadataError
from mdgate.units import energy_factor, length_factor


class ModelMeta(BaseModel):
    """What the engine must know about a model beyond its weights.

    Defaults are documented in the README: eV and Å (never schnetpack's kcal/mol calculator
    default), output keys ``energy`` and ``forces``; the cutoff is read from the model itself.
    """

    model_config = ConfigDict(extra="ignore")

    energy_unit: str = "eV"
    """Unit of the model's energy output."""
    position_unit: str = "Angstrom"
    """Length unit the model expects positions in."""
    energy_key: str = "energy"
    """Output key of the total energy, shape ``[n_systems]``."""
    forces_key: str = "forces"
    """Output key of the forces, shape ``[n_atoms, 3]``."""
    cutoff_A: float | None = Field(default=None, gt=0)
    """Interaction cutoff in Å (``None`` = read from the model, else all pairs)."""
    level_of_theory: str | None = None
    """The reference method the model was trained on (e.g. ``GFN2-xTB``)."""
    parent: str | None = None
    """The model this one was compressed from, ``name/version`` or a path."""
    parent_n_parameters: int | None = Field(default=None, gt=0)
    """Parameter count of the parent, for the compression ratio."""

    def check_units(self) -> None:
        """Raise :class:`MetadataError` if a unit is unknown."""
        try:
            energy_factor(self.energy_unit)
            length_factor(self.position_unit)
        except ValueError as e:
            raise MetadataError(str(e)) from e


class Potential(Protocol):
    """A batched potential: energies and forces for many molecules in one call."""

    device: torch.device
    cutoff_A: float | None
    n_parameters: int

    def __call__(
        self,
        numbers: torch.Tensor,
        positions_A: torch.Tensor,
        system_idx: torch.Tensor,
        n_systems: int,
        idx_i: torch.Tensor,
        idx_j: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate the potential.

        Args:
            numbers: atomic numbers, ``[n_atoms]`` long.
            positions_A: positions in Å, ``[n_atoms, 3]``.
            system_idx: molecule index of each atom, ``[n_atoms]`` long, sorted.
            n_systems: number of molecules in the batch.
            idx_i: first atom of each neighbour pair (both directions), ``[n_pairs]``.
            idx_j: second atom of each pair, ``[n_pairs]``.

        Returns:
            Energies in eV ``[n_systems]`` and forces in eV/Å ``[n_atoms, 3]``, float64.
        """
        ...


class LoadedPotential(Potential, Protocol):
    """A potential as :func:`load` returns it, whatever its framework: with the metadata it was
    loaded with and a check of the elements it covers.
    """

    meta: ModelMeta

    def check_elements(self, numbers: list[int] | set[int]) -> None:
        """Raise :class:`~mdgate.errors.ModelInterfaceError` for elements the model does not cover."""
        ...


# The one loading entry point (after Potential and ModelMeta, which the adapters import from here).
from mdgate.potentials.loading import load  # noqa: E402

__all__ = ["LoadedPotential", "ModelMeta", "Potential", "load"]
