"""A direct-force output head for schnetpack models: forces read off equivariant features.

Some teams predict forces directly, as a per-atom vector from the representation's vector
(l=1) features, instead of as −dE/dR: one forward pass and no second backward pass in
training. Such forces rotate with the molecule but are not the gradient of any energy, so
energy is not conserved in NVE; the sanity stage's finite-difference check measures exactly
that. ``scripts/train_models.py student --direct-forces`` trains one.

A pickled model refers to this class by its import path (``mdgate.potentials.direct``), so
the model loads wherever mdgate is installed.
"""

from __future__ import annotations

import torch
from torch import nn


class DirectForces(nn.Module):
    """Per-atom forces from PaiNN's scalar and vector features through gated equivariant blocks.

    Reads ``scalar_representation`` ``[n_atoms, n_in]`` and ``vector_representation``
    ``[n_atoms, 3, n_in]`` from the inputs (written by ``schnetpack.representation.PaiNN``)
    and writes ``[n_atoms, 3]`` to ``output_key`` in the model's force unit. No autograd.

    Args:
        n_in: width of the representation.
        n_layers: gated equivariant blocks (as ``schnetpack.atomistic.DipoleMoment``).
        n_hidden: hidden widths (default: halved per layer, schnetpack's rule).
        output_key: the output written.
    """

    def __init__(self, n_in: int, n_layers: int = 2, n_hidden: int | list[int] | None = None,
                 output_key: str = "forces"):
        super().__init__()
        import schnetpack as spk

        self.output_key = output_key
        self.model_outputs = [output_key]
        self.outnet = spk.nn.build_gated_equivariant_mlp(
            n_in=n_in, n_out=1, n_hidden=n_hidden, n_layers=n_layers,
            sactivation=nn.functional.silu,
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add ``inputs[output_key]``, the predicted forces ``[n_atoms, 3]``."""
        _, vectors = self.outnet((inputs["scalar_representation"], inputs["vector_representation"]))
        inputs[self.output_key] = vectors.squeeze(-1)
        return inputs
