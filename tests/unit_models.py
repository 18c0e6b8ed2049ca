"""Model wrappers for the unit-check tests, importable as ``tests.unit_models`` (module level, so
that ``torch.save``/``torch.load`` of a wrapped model works in a CLI subprocess too).
"""

from __future__ import annotations

import torch
from ase import units as ase_units
from torch import nn

#: One eV in kcal/mol (23.06): a model in eV multiplied by this is a model in kcal/mol.
KCAL_PER_MOL_PER_EV = 1.0 / (ase_units.kcal / ase_units.mol)


class ScaledModel(nn.Module):
    """A schnetpack model whose energy and forces are multiplied by ``factor``: the same model
    in another unit (``factor`` = 23.06: kcal/mol; 1/23.06: eV from a kcal/mol model).

    Args:
        model: the wrapped schnetpack ``NeuralNetworkPotential``.
        factor: the factor applied to every output (energies and forces alike).
        keys: the outputs to scale.
    """

    def __init__(self, model: nn.Module, factor: float, keys: tuple[str, ...] = ("energy", "forces")):
        super().__init__()
        self.model = model
        self.model.do_postprocessing = True
        self.factor = factor
        self.keys = keys

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the wrapped model and scale its energy and forces."""
        out = dict(self.model(inputs))
        for key in self.keys:
            out[key] = out[key] * self.factor
        return out
