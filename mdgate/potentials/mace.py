"""MACE models through ASE: :func:`load_mace`, the loader a MACE descriptor names.

``mace-torch`` is not a dependency of mdgate (it pins ``e3nn==0.4.4``): a MACE descriptor lists
it in ``requirements`` and the gate runs the model in an environment built from them, in the
model process (``mdgate.potentials.environments``). The model file is MACE's own pickle, which
``MACECalculator`` loads.
"""

from __future__ import annotations

from typing import Any


def load_mace(weights: list[str], device: str = "cpu", dtype: str = "float64") -> Any:
    """A ``mace.calculators.MACECalculator`` of the first weights file (energies in eV, Å)."""
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=weights[0], device=device, default_dtype=dtype)
