"""TorchSim's ``ModelInterface`` behind :class:`~mdgate.potentials.Potential`: one batched call.

TorchSim (PyPI ``torch-sim-atomistic``) wraps MACE, SevenNet, fairchem, ORB, MatterSim and NequIP
behind one call, ``model(state) -> {"energy": [n_systems], "forces": [n_atoms, 3], ...}`` on a
``SimState`` that holds every system of a batch, which is the engine's own shape: the whole lane
goes to the model in one call per step, as with schnetpack. Molecules are not periodic: each
system gets ``pbc = False`` and a cubic box larger than the molecule plus twice the cutoff (no
image is ever within reach). ``torch_sim`` is imported only here, when a ``torchsim`` descriptor is
loaded (in the model's own environment when it has one).
"""

from __future__ import annotations

from typing import Any

import torch
from ase.data import atomic_masses

from mdgate.errors import ModelInterfaceError
from mdgate.potentials import ModelMeta
from mdgate.potentials.adapters import _Adapter
from mdgate.potentials.descriptor import Descriptor

#: Space around a molecule in its (non-periodic) box, besides twice the cutoff, in Å.
BOX_MARGIN_A = 10.0


class TorchSimPotential(_Adapter):
    """A TorchSim ``ModelInterface`` as a batched potential.

    Args:
        model: the model (``forward(state)`` returning ``energy`` and ``forces``; ``dtype`` and
            ``device`` attributes, as every TorchSim model has).
        descriptor: the model's descriptor (TorchSim models work in eV and Å).
        meta: its units and cutoff.
        device: where the returned tensors live.
    """

    #: The model finds its own neighbours: the engine's pairs are not passed to it.
    uses_pairs = False

    def __init__(self, model: Any, descriptor: Descriptor, meta: ModelMeta, device: torch.device):
        if not callable(model) or not hasattr(model, "dtype"):
            raise ModelInterfaceError(f"the torchsim loader returned a {type(model).__name__}, not a TorchSim "
                                      "ModelInterface (a torch module with forward(state), dtype and device)")
        props = set(getattr(model, "implemented_properties", None) or ("energy", "forces"))
        if not {"energy", "forces"} <= props:
            raise ModelInterfaceError(f"{type(model).__name__} implements {sorted(props)}; MD needs energy and forces")
        type_map = getattr(model, "type_map", None)
        elements = frozenset(int(z) for z in type_map) if isinstance(type_map, dict) and type_map else None
        super().__init__(descriptor, meta, device, elements)
        self.model = model
        self.model_device = torch.device(getattr(model, "device", device))
        self.dtype = model.dtype
        cutoff = getattr(model, "cutoff", None)
        self._own_cutoff = None if cutoff is None else float(cutoff) * self._l
        self.cutoff_A = meta.cutoff_A or self._own_cutoff
        modules = [model] if isinstance(model, torch.nn.Module) else []
        self.n_parameters = sum(p.numel() for m in modules for p in m.parameters())

    def own_cutoff_A(self) -> float | None:
        """The model's ``cutoff`` attribute, in Å."""
        return self._own_cutoff

    def __call__(self, numbers: torch.Tensor, positions_A: torch.Tensor, system_idx: torch.Tensor,
                 n_systems: int, idx_i: torch.Tensor, idx_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (eV, ``[n_systems]``) and forces (eV/Å, ``[n_atoms, 3]``), float64."""
        from torch_sim.state import SimState

        dev, dtype = self.model_device, self.dtype
        positions = (positions_A.detach() / self._l).to(dev, dtype)
        z = numbers.detach().to(dev, torch.long)
        masses = torch.as_tensor(atomic_masses, dtype=dtype, device=dev)[z]
        sys_idx = system_idx.detach().to(dev, torch.long)
        extent = float((positions.max(0).values - positions.min(0).values).max()) if len(positions) else 0.0
        side = extent + 2 * (self.cutoff_A or 6.0) / self._l + BOX_MARGIN_A
        cell = torch.eye(3, dtype=dtype, device=dev).expand(n_systems, 3, 3) * side
        state = SimState(positions=positions, masses=masses, cell=cell.contiguous(), pbc=False, atomic_numbers=z,
                         system_idx=sys_idx)
        out = self.model(state)
        energy, forces = out.get("energy"), out.get("forces")
        if energy is None or forces is None:
            raise ModelInterfaceError(f"{type(self.model).__name__} returned {sorted(out)}; MD needs energy and forces")
        return self._to_eV(energy.reshape(n_systems), forces.reshape(-1, 3))
