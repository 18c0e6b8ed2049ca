"""Adapters: models of other frameworks behind :class:`~mdgate.potentials.Potential`.

Each takes the engine's batch (all molecules concatenated, a sorted per-atom ``system_idx``,
positions in Å) and returns energies in eV and forces in eV/Å, float64, converting from the
units the descriptor declares. The engine never knows which adapter ran.

- :class:`AsePotential`: any ASE ``Calculator``, one call per molecule (the fallback). The
  neighbour pairs the engine passes are not used: the calculator finds its own.
- :class:`TorchaniPotential`: a torchani module, all molecules in one padded call
  (``[n_systems, max_atoms]``), forces as −dE/dR by autograd.

schnetpack models keep their own adapter, :class:`mdgate.potentials.schnetpack.SchnetpackPotential`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers
from torch import nn

from mdgate.errors import MetadataError, ModelInterfaceError
from mdgate.potentials import ModelMeta
from mdgate.potentials.descriptor import Descriptor, symbol
from mdgate.units import energy_factor, length_factor


class _Adapter:
    """What every adapter carries besides its call: device, cutoff, units, elements."""

    def __init__(self, descriptor: Descriptor, meta: ModelMeta, device: torch.device,
                 elements: frozenset[int] | None = None):
        self.descriptor = descriptor
        self.meta = meta
        self.device = device
        self.cutoff_A: float | None = meta.cutoff_A
        self.n_parameters = 0
        self.model_call = "eager"
        self._e = energy_factor(meta.energy_unit)
        self._l = length_factor(meta.position_unit)
        declared = descriptor.atomic_numbers
        if declared is not None and elements is not None and not declared <= elements:
            extra = ", ".join(symbol(z) for z in sorted(declared - elements))
            raise MetadataError(f"the descriptor declares elements {extra} that the model itself does not cover "
                                f"(it covers {', '.join(symbol(z) for z in sorted(elements))})")
        self.elements: frozenset[int] | None = declared if declared is not None else elements
        """Atomic numbers the model covers (``None``: unknown)."""

    def own_cutoff_A(self) -> float | None:
        """The cutoff read from the model itself, in Å (``None``: it has none mdgate can read)."""
        return None

    def check_elements(self, numbers: list[int] | set[int]) -> None:
        """Raise :class:`ModelInterfaceError` for elements the model does not cover."""
        if self.elements is None:
            return
        missing = sorted({int(z) for z in numbers} - self.elements)
        if missing:
            raise ModelInterfaceError(
                f"elements {', '.join(symbol(z) for z in missing)} are not covered by the model "
                f"(it covers {', '.join(symbol(z) for z in sorted(self.elements))})")

    def _to_eV(self, energy: torch.Tensor, forces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model units to eV and eV/Å, float64, on the adapter's device."""
        energy = energy.detach().to(self.device, torch.float64) * self._e
        forces = forces.detach().to(self.device, torch.float64) * (self._e / self._l)
        return energy, forces


class AsePotential(_Adapter):
    """An ASE calculator as a potential: the batch is split by molecule, one call each.

    Args:
        calculator: the calculator (``energy`` and ``forces``, in the descriptor's units).
        descriptor: the model's descriptor.
        meta: its units and cutoff.
        device: where the returned tensors live.
    """

    #: The calculator finds its own neighbours: the engine's pairs are not passed to it.
    uses_pairs = False

    def __init__(self, calculator: Any, descriptor: Descriptor, meta: ModelMeta, device: torch.device,
                 reload: Callable[[Descriptor, torch.device], Any] | None = None):
        missing = [p for p in ("energy", "forces") if p not in getattr(calculator, "implemented_properties", ())]
        if missing:
            raise ModelInterfaceError(
                f"{type(calculator).__name__} does not implement {missing}; an ASE calculator for MD needs "
                "energy and forces")
        super().__init__(descriptor, meta, device)
        self.calculator = calculator
        self._reload = reload
        self.n_parameters = _count_parameters(calculator)
        # One calculator holds one structure's state: MD lanes in threads take turns.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Pickled without its lock, and without its calculator when it can be rebuilt from the
        descriptor (calculators often hold what pickle cannot: the MD worker processes build
        their own).
        """
        state = self.__dict__.copy()
        state.pop("_lock")
        if self._reload is not None:
            state["calculator"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        """Unpickled with a fresh lock, and the calculator rebuilt from the descriptor."""
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if self.calculator is None and self._reload is not None:
            self.calculator = self._reload(self.descriptor, self.device)

    def __call__(self, numbers: torch.Tensor, positions_A: torch.Tensor, system_idx: torch.Tensor,
                 n_systems: int, idx_i: torch.Tensor, idx_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (eV, ``[n_systems]``) and forces (eV/Å, ``[n_atoms, 3]``), float64."""
        z = numbers.detach().cpu().numpy()
        x = positions_A.detach().cpu().to(torch.float64).numpy() / self._l
        offsets = np.concatenate([[0], np.cumsum(torch.bincount(system_idx, minlength=n_systems).cpu().numpy())])
        energies = np.empty(n_systems)
        forces = np.empty((len(z), 3))
        with self._lock:
            for s in range(n_systems):
                a, b = int(offsets[s]), int(offsets[s + 1])
                atoms = Atoms(numbers=z[a:b], positions=x[a:b])
                # Forces first: calculators compute the energy with them, so the second call is cached.
                forces[a:b] = self.calculator.get_property("forces", atoms)
                energies[s] = self.calculator.get_property("energy", atoms)
        return self._to_eV(torch.from_numpy(energies), torch.from_numpy(forces))


class TorchaniPotential(_Adapter):
    """A torchani module as a batched potential: one padded call for all molecules.

    The module takes ``(species [S, A], coordinates [S, A, 3])`` and returns an object with
    ``.energies`` ``[S]`` (torchani's ``BuiltinModel``/``BuiltinEnsemble``, or a ``Sequential`` of
    AEV computer, networks and energy shifter). Species are atomic numbers when the module has
    ``periodic_table_index`` set, else indices into its ``species`` list; padding is ``-1``.

    Args:
        module: the torchani module.
        descriptor: the model's descriptor (energies usually in Hartree, positions in Å).
        meta: its units and cutoff.
        device: where to evaluate.
    """

    def __init__(self, module: nn.Module, descriptor: Descriptor, meta: ModelMeta, device: torch.device):
        if not isinstance(module, nn.Module):
            raise ModelInterfaceError(f"the ani loader returned a {type(module).__name__}, not a torch module")
        symbols = list(getattr(module, "species", None) or [])
        if not symbols or any(s not in atomic_numbers for s in symbols):
            raise ModelInterfaceError(f"the torchani module has no list of element symbols in .species "
                                      f"(got {symbols!r})")
        covered = [atomic_numbers[s] for s in symbols]
        super().__init__(descriptor, meta, device, frozenset(covered))
        self.module = module.to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.n_parameters = sum(p.numel() for p in self.module.parameters())
        params = list(self.module.parameters())
        self.dtype = params[0].dtype if params else torch.float32
        by_table = bool(getattr(module, "periodic_table_index", False))
        self._species = torch.full((max(covered) + 1,), -1, dtype=torch.long, device=device)
        for k, z in enumerate(covered):
            self._species[z] = z if by_table else k
        self.cutoff_A = meta.cutoff_A or self.own_cutoff_A()

    def own_cutoff_A(self) -> float | None:
        """The radial cutoff of the module's AEV computer (``Rcr``), in Å."""
        aev = getattr(self.module, "aev_computer", None)
        rcr = getattr(aev, "Rcr", None)
        return None if rcr is None else float(rcr) * self._l

    def __call__(self, numbers: torch.Tensor, positions_A: torch.Tensor, system_idx: torch.Tensor,
                 n_systems: int, idx_i: torch.Tensor, idx_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (eV, ``[n_systems]``) and forces (eV/Å, ``[n_atoms, 3]``), float64."""
        if int(numbers.max()) >= self._species.numel() or bool((self._species[numbers] < 0).any()):
            self.check_elements({int(z) for z in numbers})
        counts = torch.bincount(system_idx, minlength=n_systems)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(numbers.numel(), device=numbers.device) - starts[system_idx]
        width = int(counts.max())
        species = torch.full((n_systems, width), -1, dtype=torch.long, device=self.device)
        species[system_idx, slot] = self._species[numbers]
        with torch.enable_grad():
            positions = (positions_A.detach() / self._l).to(self.dtype).requires_grad_(True)
            coordinates = positions.new_zeros((n_systems, width, 3)).index_put((system_idx, slot), positions)
            energy = self.module((species, coordinates)).energies
            (grad,) = torch.autograd.grad(energy.sum(), positions)
        return self._to_eV(energy, -grad)


def _count_parameters(calculator: Any) -> int:
    """Parameters of the torch modules a calculator holds as attributes (0 if none)."""
    modules = [v for v in vars(calculator).values() if isinstance(v, nn.Module)]
    return sum(p.numel() for m in modules for p in m.parameters())
