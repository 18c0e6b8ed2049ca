"""schnetpack ``NeuralNetworkPotential`` files as :class:`~mdgate.potentials.Potential`."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mdgate.errors import ModelInterfaceError, ModelLoadError
from mdgate.potentials import ModelMeta
from mdgate.units import energy_factor, length_factor


def resolve_device(device: str) -> torch.device:
    """Map ``auto``/``cpu``/``cuda`` to a torch device (``auto`` prefers CUDA)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for but no CUDA GPU is visible; use cpu")
    return torch.device(device)


def load_module(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Load a pickled torch model file (``torch.save(model)``, e.g. schnetpack's ``best_model``).

    Loading a pickle runs code from the file: only load models from a trusted registry.
    Old schnetpack files are upgraded with ``schnetpack.utils.load_model``. A folder with
    ``architecture.json`` + ``state_dict.pt`` (:mod:`mdgate.potentials.spec`) is rebuilt from
    its spec and loaded with ``weights_only=True``: no code from the files runs.

    Raises:
        ModelLoadError: if the file is missing, is not a torch file, or holds no ``nn.Module``.
    """
    from mdgate.potentials.spec import is_state_dict_model, load_state_dict_model

    path = Path(path)
    if is_state_dict_model(path):
        return load_state_dict_model(path, device)
    if path.is_dir():
        candidates = [path / n for n in ("best_model", "model.pt", "data/model.pth")]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ModelLoadError(f"{path} is a folder without best_model or model.pt in it")
        path = found[0]
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(
            f"{path} is not a loadable torch model ({type(e).__name__}: {reason}); "
            "give a file written by torch.save(model)"
        ) from e
    if isinstance(obj, dict):
        raise ModelLoadError(
            f"{path} holds a state dict, not a model; save the whole module with torch.save(model)"
        )
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    if hasattr(obj, "representation") and getattr(obj, "spk_version", None) != "2.2.0":
        from schnetpack.utils import load_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = load_model(str(path), device=device)
    return obj


def find_cutoff_A(model: nn.Module, position_unit: str = "Angstrom") -> float | None:
    """Return the model's cutoff in Å from its cutoff function or representation, if any."""
    for module in model.modules():
        value = getattr(module, "cutoff", None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value) * length_factor(position_unit)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value) * length_factor(position_unit)
    return None


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


#: Batches whose static inputs are kept; more are rare (concurrent MD tasks, the accuracy set).
_STATIC_CACHE_SIZE = 16


@dataclass
class _StaticInputs:
    """The inputs of one batch that do not change between MD steps."""

    system_idx: torch.Tensor
    n_systems: int
    inputs: dict[str, torch.Tensor]
    zeros: torch.Tensor
    """Zero pair offsets (grown as needed; sliced to the pairs of a step)."""


#: The arguments of one potential call: numbers, positions (Å), system index, number of systems,
#: pair indices i and j.
CallArgs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]


class SchnetpackPotential:
    """A schnetpack-style model (dict of ``schnetpack.properties`` in, dict out) as a potential.

    Args:
        model: the loaded module.
        meta: units, output keys and cutoff; see :class:`ModelMeta`.
        device: where to evaluate.
    """

    def __init__(self, model: nn.Module, meta: ModelMeta, device: torch.device | str = "cpu"):
        meta.check_units()
        self.meta = meta
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # Forces are -dE/dR by autograd w.r.t. positions only: parameters need no gradient.
        for p in self.model.parameters():
            p.requires_grad_(False)
        if hasattr(self.model, "do_postprocessing"):
            setattr(self.model, "do_postprocessing", True)  # noqa: B010 (torch types module attributes as Tensor | Module)
        self.n_parameters = count_parameters(self.model)
        params = list(self.model.parameters())
        self.dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
        self.cutoff_A = meta.cutoff_A or find_cutoff_A(self.model, meta.position_unit)
        self._e = energy_factor(meta.energy_unit)
        self._l = length_factor(meta.position_unit)
        self._max_z = self._find_max_z()
        self._compile_pending = False
        self._static_cache: dict[int, _StaticInputs] = {}
        self.model_call = "eager"
        """``compiled`` once :meth:`compile` succeeded, else ``eager`` (with the reason if it failed)."""

    def __getstate__(self) -> dict:
        """Pickled (into a Dask task) without per-process state: cached inputs, compile owner."""
        state = self.__dict__.copy()
        state["_static_cache"] = {}
        state.pop("_compile_requested_by", None)
        return state

    def request_compile(self) -> None:
        """Compile at the next call, checked against the eager result of that same call.

        Only the first request counts: MD runs in several threads on one potential (the gate's
        per-molecule tasks) each ask, and the model is compiled (or kept eager) once.
        """
        # dict.setdefault is atomic: exactly one thread's request is the first.
        if self.__dict__.setdefault("_compile_requested_by", threading.get_ident()) == threading.get_ident() \
                and self.model_call == "eager":
            self._compile_pending = True

    def compile(self, check: CallArgs | None = None, atol_eV_per_A: float = 1e-3) -> str:
        """Compile the representation with ``torch.compile(dynamic=True)`` and keep it only if it
        runs and reproduces the eager forces on ``check`` (the arguments of one call).

        Returns:
            ``"compiled"``, or why the eager model is kept.
        """
        rep = getattr(self.model, "representation", None)
        if not isinstance(rep, nn.Module):
            return "eager: model has no representation module to compile"
        try:
            expected = self(*check) if check is not None else None
            setattr(self.model, "representation", torch.compile(rep, dynamic=True))  # noqa: B010 (torch types it Tensor)
            if check is not None and expected is not None:
                _, forces = self(*check)
                diff = float((forces - expected[1]).abs().max())
                if not diff <= atol_eV_per_A:
                    raise RuntimeError(f"compiled forces differ by {diff:.2e} eV/Å")
        except Exception as e:  # any compiler failure: the eager model is always correct
            self.model.representation = rep
            self.model_call = f"eager: compilation failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
            return self.model_call
        self.model_call = "compiled"
        return self.model_call

    def _find_max_z(self) -> int | None:
        for module in self.model.modules():
            if isinstance(module, nn.Embedding):
                return module.num_embeddings - 1
        return None

    def check_elements(self, numbers: list[int] | set[int]) -> None:
        """Raise :class:`ModelInterfaceError` for elements the model cannot have seen."""
        numbers = set(int(z) for z in numbers)
        if self._max_z is not None and max(numbers) > self._max_z:
            raise ModelInterfaceError(
                f"element Z={max(numbers)} is beyond the model's embedding (max Z={self._max_z})"
            )
        for module in self.model.modules():
            atomref = getattr(module, "atomref", None)
            if getattr(module, "add_atomrefs", False) and isinstance(atomref, torch.Tensor):
                ref = atomref.detach().flatten()
                seen = {z for z in range(ref.numel()) if float(ref[z]) != 0.0}
                unseen = sorted(z for z in numbers if seen and z not in seen)
                if unseen:
                    raise ModelInterfaceError(
                        f"elements Z={unseen} were not in the model's training data "
                        f"(no atom reference energy; it knows Z={sorted(seen)})"
                    )

    def __call__(
        self,
        numbers: torch.Tensor,
        positions_A: torch.Tensor,
        system_idx: torch.Tensor,
        n_systems: int,
        idx_i: torch.Tensor,
        idx_j: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (eV, ``[n_systems]``) and forces (eV/Å, ``[n_atoms, 3]``), float64."""
        if self._compile_pending:
            self._compile_pending = False
            self.compile((numbers, positions_A, system_idx, n_systems, idx_i, idx_j))
        positions = (positions_A if self._l == 1.0 else positions_A / self._l).to(self.dtype)
        inputs = {
            "_atomic_numbers": numbers,
            "_positions": positions,
            "_idx_m": system_idx,
            "_idx_i": idx_i,
            "_idx_j": idx_j,
            **self._static_inputs(system_idx, n_systems, idx_i.numel()),
        }
        with torch.enable_grad():
            out = self.model(inputs)
        return self._extract(out, positions.shape[0], n_systems)

    def _static_inputs(self, system_idx: torch.Tensor, n_systems: int, n_pairs: int) -> dict[str, torch.Tensor]:
        """Inputs that only change with the batch (cached between MD steps): atoms per molecule,
        zero cell and pbc (isolated molecules), zero pair offsets.

        One cache entry per batch: the gate runs several per-molecule MD tasks in threads that
        share this potential, so no entry is ever reset for another batch (a shared slot gave one
        thread the other's offsets). Entries are found by the batch tensor's identity; the entry
        keeps the tensor alive so the id cannot be reused. Dict reads and writes are atomic.
        """
        entry = self._static_cache.get(id(system_idx))
        if entry is None or entry.system_idx is not system_idx or entry.n_systems != n_systems:
            entry = _StaticInputs(system_idx, n_systems, {
                "_n_atoms": torch.bincount(system_idx, minlength=n_systems),
                "_cell": torch.zeros((n_systems, 3, 3), dtype=self.dtype, device=self.device),
                "_pbc": torch.zeros((n_systems, 3), dtype=torch.bool, device=self.device),
            }, torch.zeros((0, 3), dtype=self.dtype, device=self.device))
            if len(self._static_cache) >= _STATIC_CACHE_SIZE:
                self._static_cache.clear()  # a concurrent batch that loses its entry just rebuilds it
            self._static_cache[id(system_idx)] = entry
        zeros = entry.zeros
        if zeros.shape[0] < n_pairs:
            zeros = entry.zeros = torch.zeros((2 * n_pairs, 3), dtype=self.dtype, device=self.device)
        return {**entry.inputs, "_offsets": zeros[:n_pairs]}

    def _extract(self, out: object, n_atoms: int, n_systems: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(out, dict):
            raise ModelInterfaceError(
                f"model returned {type(out).__name__}, expected a dict of outputs"
            )
        for key, what in ((self.meta.energy_key, "energy"), (self.meta.forces_key, "forces")):
            if key not in out:
                hint = " (add schnetpack.atomistic.Forces to its outputs)" if what == "forces" else ""
                raise ModelInterfaceError(
                    f"model has no {what} output {key!r}{hint}; its outputs are {sorted(out)}"
                )
        energy = out[self.meta.energy_key]
        forces = out[self.meta.forces_key]
        if energy.numel() != n_systems:
            raise ModelInterfaceError(
                f"energy output {self.meta.energy_key!r} has shape {tuple(energy.shape)}, "
                f"expected [{n_systems}] (one per molecule)"
            )
        if tuple(forces.shape) != (n_atoms, 3):
            raise ModelInterfaceError(
                f"forces output {self.meta.forces_key!r} has shape {tuple(forces.shape)}, "
                f"expected [{n_atoms}, 3]"
            )
        energy = energy.detach().reshape(n_systems).to(torch.float64)
        forces = forces.detach().to(torch.float64)
        if self._e != 1.0:
            energy = energy * self._e
        if self._e != self._l:
            forces = forces * (self._e / self._l)
        return energy, forces


def load_potential(
    path: str | Path, meta: ModelMeta | None = None, device: str = "auto"
) -> SchnetpackPotential:
    """Load a model file as a potential on ``device`` (``auto`` | ``cpu`` | ``cuda``).

    Raises:
        ModelLoadError: file missing or not a model.
        MetadataError: unknown units.
    """
    dev = resolve_device(device)
    model = load_module(path, dev)
    return SchnetpackPotential(model, meta or ModelMeta(), dev)
