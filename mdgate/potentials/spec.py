"""schnetpack potentials stored as weights plus an architecture spec: loading runs no code.

A pickled ``torch.save(model)`` file runs code from the file when it is loaded. This format
does not: a folder holding

- ``architecture.json``: the architecture (:class:`ArchitectureSpec`, JSON, validated strictly);
- ``state_dict.pt``: the weights, ``torch.save(model.state_dict())``, read with
  ``torch.load(..., weights_only=True)``, which refuses anything but tensors and plain containers.

The model is rebuilt from the spec with schnetpack's own classes (PaiNN or SchNet representation,
Gaussian radial basis, cosine cutoff, an ``Atomwise`` energy head, forces as −dE/dR, optional
``CastTo64`` and ``AddOffsets`` post-processors), then the weights are loaded strictly: a missing
or unexpected tensor, or one of the wrong shape, is an error.

Write one with :func:`save_state_dict_model` (``spec_from_module`` reads the spec off a built
schnetpack model).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from mdgate.errors import ModelLoadError

FORMAT = "mdgate.state_dict/1"
SPEC_FILE = "architecture.json"
WEIGHTS_FILE = "state_dict.pt"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RepresentationSpec(_Strict):
    """The schnetpack representation."""

    type: Literal["PaiNN", "SchNet"]
    n_atom_basis: Annotated[int, Field(gt=0, le=4096)]
    n_interactions: Annotated[int, Field(gt=0, le=64)]
    n_filters: Annotated[int, Field(gt=0, le=4096)] | None = None
    """SchNet only (default: ``n_atom_basis``)."""
    shared_interactions: bool = False
    shared_filters: bool = False
    """PaiNN only."""


class ArchitectureSpec(_Strict):
    """What is needed to rebuild a schnetpack ``NeuralNetworkPotential`` before loading weights."""

    format: Literal["mdgate.state_dict/1"] = "mdgate.state_dict/1"
    representation: RepresentationSpec
    n_rbf: Annotated[int, Field(gt=0, le=1024)]
    """Gaussian radial basis functions."""
    cutoff_A: Annotated[float, Field(gt=0, le=100)]
    """Cutoff of the radial basis and of the cosine cutoff function, in the model's length unit."""
    energy_key: str = "energy"
    forces_key: str = "forces"
    head_n_layers: Annotated[int, Field(ge=1, le=16)] = 2
    head_n_hidden: Annotated[int, Field(gt=0)] | list[Annotated[int, Field(gt=0)]] | None = None
    cast_to_64: bool = True
    add_atomrefs: bool = False
    add_mean: bool = False
    zmax: Annotated[int, Field(gt=0, le=256)] = 100


def build_model(spec: ArchitectureSpec) -> nn.Module:
    """A schnetpack potential with this architecture and freshly initialised weights."""
    import schnetpack as spk

    rep = spec.representation
    radial = spk.nn.GaussianRBF(n_rbf=spec.n_rbf, cutoff=spec.cutoff_A)
    cutoff_fn = spk.nn.CosineCutoff(spec.cutoff_A)
    if rep.type == "PaiNN":
        representation = spk.representation.PaiNN(
            n_atom_basis=rep.n_atom_basis, n_interactions=rep.n_interactions, radial_basis=radial,
            cutoff_fn=cutoff_fn, shared_interactions=rep.shared_interactions,
            shared_filters=rep.shared_filters,
        )
    else:
        representation = spk.representation.SchNet(
            n_atom_basis=rep.n_atom_basis, n_interactions=rep.n_interactions, radial_basis=radial,
            cutoff_fn=cutoff_fn, n_filters=rep.n_filters or rep.n_atom_basis,
            shared_interactions=rep.shared_interactions,
        )
    post: list[nn.Module] = []
    if spec.cast_to_64:
        post.append(spk.transform.CastTo64())
    if spec.add_atomrefs or spec.add_mean:
        post.append(spk.transform.AddOffsets(
            spec.energy_key, add_mean=spec.add_mean, add_atomrefs=spec.add_atomrefs, zmax=spec.zmax,
            atomrefs=torch.zeros(spec.zmax, dtype=torch.float64) if spec.add_atomrefs else None,
            property_mean=torch.zeros(1, dtype=torch.float64) if spec.add_mean else None,
        ))
    return spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=rep.n_atom_basis, output_key=spec.energy_key,
                                   n_layers=spec.head_n_layers, n_hidden=spec.head_n_hidden),
            spk.atomistic.Forces(energy_key=spec.energy_key, force_key=spec.forces_key),
        ],
        postprocessors=post,
    )


def spec_from_module(model: nn.Module) -> ArchitectureSpec:
    """Read the architecture spec off a schnetpack ``NeuralNetworkPotential`` built from the
    classes this format supports.

    Raises:
        ModelLoadError: the model has a part the format cannot describe.
    """
    import schnetpack as spk

    rep = getattr(model, "representation", None)
    if isinstance(rep, spk.representation.PaiNN):
        rspec = RepresentationSpec(type="PaiNN", n_atom_basis=rep.n_atom_basis,
                                   n_interactions=rep.n_interactions,
                                   shared_interactions=_shared(rep.interactions),
                                   shared_filters=bool(rep.share_filters))
    elif isinstance(rep, spk.representation.SchNet):
        interactions = _module_list(rep, "interactions")
        in2f = interactions[0].in2f
        if not isinstance(in2f, nn.Linear):
            raise ModelLoadError(f"SchNet interaction's in2f is a {type(in2f).__name__}, not a Linear layer")
        rspec = RepresentationSpec(type="SchNet", n_atom_basis=rep.n_atom_basis,
                                   n_interactions=len(interactions), n_filters=in2f.out_features,
                                   shared_interactions=_shared(interactions))
    else:
        raise ModelLoadError(f"the state-dict format describes PaiNN and SchNet, not {type(rep).__name__}")
    outputs, post = _module_list(model, "output_modules"), _module_list(model, "postprocessors")
    heads = [m for m in outputs if isinstance(m, spk.atomistic.Atomwise)]
    forces = [m for m in outputs if isinstance(m, spk.atomistic.Forces)]
    if len(heads) != 1 or len(forces) != 1:
        raise ModelLoadError("the state-dict format needs one Atomwise energy head and one Forces output")
    dense = [m for m in heads[0].outnet if isinstance(m, nn.Linear)]
    hidden = [m.out_features for m in dense[:-1]]
    offsets = [p for p in post if isinstance(p, spk.transform.AddOffsets)]
    return ArchitectureSpec(
        representation=rspec, n_rbf=rep.radial_basis.n_rbf, cutoff_A=float(rep.cutoff_fn.cutoff),
        energy_key=heads[0].output_key, forces_key=forces[0].force_key, head_n_layers=len(dense),
        head_n_hidden=hidden or None,
        cast_to_64=any(isinstance(p, spk.transform.CastTo64) for p in post),
        add_atomrefs=bool(offsets and offsets[0].add_atomrefs),
        add_mean=bool(offsets and offsets[0].add_mean),
        zmax=int(offsets[0].atomref.numel()) if offsets else 100,
    )


def _module_list(owner: nn.Module, name: str) -> nn.ModuleList:
    """``owner.<name>`` as the module list it must be (torch types module attributes loosely)."""
    value = getattr(owner, name)
    if not isinstance(value, nn.ModuleList):
        raise ModelLoadError(f"{type(owner).__name__}.{name} is a {type(value).__name__}, not a module list")
    return value


def _shared(blocks: nn.ModuleList) -> bool:
    """Are the interaction blocks one module repeated (schnetpack's ``shared_interactions``)?"""
    return len(blocks) > 1 and len({id(b) for b in blocks}) == 1


def save_state_dict_model(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model`` in the state-dict format (``architecture.json`` + ``state_dict.pt``).

    The model is rebuilt from the spec and checked to have the same tensors before anything is
    written.
    """
    spec = spec_from_module(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    build_model(spec).load_state_dict(state, strict=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / WEIGHTS_FILE)
    (folder / SPEC_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=1))
    return folder


def is_state_dict_model(path: str | Path) -> bool:
    """Is ``path`` a folder in the state-dict format (or its ``architecture.json``)?"""
    path = Path(path)
    return (path.is_dir() and (path / SPEC_FILE).is_file()) or (path.name == SPEC_FILE and path.is_file())


def load_state_dict_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from ``architecture.json`` and load ``state_dict.pt`` with
    ``weights_only=True``: nothing in the files is executed.

    Raises:
        ModelLoadError: a file is missing, the spec does not validate, the weights file is not a
            plain state dict, or its tensors do not match the architecture.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelLoadError(f"{folder}: {SPEC_FILE} without {WEIGHTS_FILE} beside it")
    try:
        spec = ArchitectureSpec.model_validate(json.loads(spec_path.read_text()))
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, ValidationError):
            err = e.errors()[0]
            what = f"field '{'.'.join(map(str, err['loc']))}' = {err.get('input')!r}: {err['msg']}"
        else:
            what = f"not JSON ({str(e).splitlines()[0][:120]})"
        raise ModelLoadError(f"{spec_path}: {what}") from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(
            f"{weights_path} is not a plain state dict that loads with weights_only=True "
            f"({type(e).__name__}: {reason})"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{weights_path} must hold a state dict (names → tensors)")
    model = build_model(spec)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    wrong = [k for k, v in state.items() if k in shapes and tuple(v.shape) != shapes[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} {keys[:3]}" for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                          ("wrong shape", wrong)) if keys]
        raise ModelLoadError(f"{weights_path} does not match {SPEC_FILE}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model.to(device)
