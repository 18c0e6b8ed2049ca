"""One way in: :func:`load` turns a descriptor, a descriptor file or folder, or a schnetpack model
into a :class:`~mdgate.potentials.Potential`, through the adapter its framework names
(:data:`ADAPTERS`), and :func:`check_coverage` says which molecules hold elements it does not cover.

A ``loader`` (``module:callable``) is imported and called, and a pickle runs code from its file:
given an :class:`~mdgate.potentials.isolation.Isolation`, :func:`load` loads such models only in a
model process (:mod:`mdgate.potentials.remote`), and pickles only when the policy allows them.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdgate.errors import ModelInterfaceError, ModelLoadError
from mdgate.molecules import Molecule
from mdgate.potentials import LoadedPotential, ModelMeta, Potential
from mdgate.potentials.adapters import AsePotential, TorchaniPotential
from mdgate.potentials.describe import resolve
from mdgate.potentials.descriptor import Descriptor, Framework, symbol
from mdgate.potentials.environments import environment, unmet
from mdgate.potentials.isolation import Isolation, in_model_process
from mdgate.potentials.remote import RemotePotential
from mdgate.potentials.schnetpack import SchnetpackPotential, find_cutoff_A, load_potential, resolve_device


def load(source: str | Path | Descriptor, device: str = "auto", meta: ModelMeta | None = None,
         isolation: Isolation | None = None, probes: list[str] | None = None) -> LoadedPotential:
    """Load a model as a batched potential.

    Args:
        source: a :class:`Descriptor`, a descriptor YAML file, a folder holding ``mdgate.yaml``,
            or a schnetpack model file, state-dict folder or training run (its descriptor derived
            by :func:`~mdgate.potentials.describe.describe`).
        device: ``auto`` | ``cpu`` | ``cuda`` (``auto`` prefers CUDA).
        meta: metadata given explicitly (options, a sidecar); a field that contradicts the
            descriptor is an error; ``parent`` and such are kept.
        isolation: the trust policy (:mod:`mdgate.potentials.isolation`): pickles and loaders in
            a model process, pickles only when allowed. ``None``: a trusted caller, everything
            in this process.
        probes: folders the model process must not be able to write (checked before the model
            loads when it runs sandboxed).

    Returns:
        The potential, with ``meta`` (:class:`ModelMeta`) and ``check_elements``; those of other
        frameworks than schnetpack also have ``descriptor`` and ``elements``.

    Raises:
        ModelLoadError: nothing loadable, a loader that cannot be imported or fails, a pickle
            the policy does not allow, a model process that does not start.
        MetadataError: a bad descriptor or contradictory metadata.
        ModelInterfaceError: the loader returned something the adapter cannot call.
    """
    descriptor = resolve(source, meta)
    model_meta = descriptor.model_meta(meta)
    if isolation is not None:
        if isolation.python is None:
            isolation = with_environment(descriptor, isolation)
        # in_model_process raises for a pickle the policy refuses, in any environment
        if in_model_process(descriptor, isolation) or isolation.python is not None:
            return RemotePotential(descriptor, model_meta, resolve_device(device), isolation, probes)
    return ADAPTERS[descriptor.framework](descriptor, model_meta, resolve_device(device))


def with_environment(descriptor: Descriptor, isolation: Isolation,
                     log: Callable[[str], None] | None = None) -> Isolation:
    """``isolation`` with the interpreter of the model's own environment when the descriptor's
    requirements do not fit the engine's (built once, :mod:`mdgate.potentials.environments`).

    Raises:
        ModelLoadError: the environment could not be built (naming the package).
    """
    missing = unmet(descriptor.requirements)
    if not missing:
        return isolation
    python, _ = environment(descriptor.requirements, log or (lambda line: print(line, file=sys.stderr)))
    return isolation.model_copy(update={"python": str(python)})


def _schnetpack(descriptor: Descriptor, meta: ModelMeta, device: torch.device) -> LoadedPotential:
    """Today's path: the model file through :func:`~mdgate.potentials.schnetpack.load_potential`."""
    if descriptor.loader is None:
        return load_potential(descriptor.weight_paths()[0], meta, str(device))
    module = call_loader(descriptor, device)
    if not isinstance(module, nn.Module):
        raise ModelInterfaceError(f"loader {descriptor.loader} returned a {type(module).__name__}, "
                                  "not a schnetpack torch module")
    return SchnetpackPotential(module, meta, device)


def _ase(descriptor: Descriptor, meta: ModelMeta, device: torch.device) -> LoadedPotential:
    return AsePotential(call_loader(descriptor, device), descriptor, meta, device, reload=call_loader)


def _ani(descriptor: Descriptor, meta: ModelMeta, device: torch.device) -> LoadedPotential:
    return TorchaniPotential(call_loader(descriptor, device), descriptor, meta, device)


def _torchsim(descriptor: Descriptor, meta: ModelMeta, device: torch.device) -> LoadedPotential:
    from mdgate.potentials.torchsim import TorchSimPotential  # torch_sim is imported only for these models

    return TorchSimPotential(call_loader(descriptor, device), descriptor, meta, device)


#: The adapter of each framework: ``(descriptor, meta, device) -> Potential``.
ADAPTERS: dict[Framework, Callable[[Descriptor, ModelMeta, torch.device], LoadedPotential]] = {
    Framework.SCHNETPACK: _schnetpack,
    Framework.ASE: _ase,
    Framework.ANI: _ani,
    Framework.TORCHSIM: _torchsim,
}


def import_loader(spec: str) -> Callable[..., Any]:
    """The callable named by ``module:callable`` (attributes may be dotted: ``mod:Class.build``).

    Raises:
        ModelLoadError: the module cannot be imported or has no such callable.
    """
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelLoadError(f"field 'loader' = {spec!r}: cannot import {module_name} ({e}); "
                             "install the descriptor's requirements") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"field 'loader' = {spec!r}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"field 'loader' = {spec!r}: {attr} is a {type(obj).__name__}, not callable")
    return obj


def call_loader(descriptor: Descriptor, device: torch.device) -> Any:
    """Call the descriptor's loader with its ``kwargs``, plus ``weights`` (absolute paths) when the
    descriptor lists weights and ``device`` when the loader takes one.

    Raises:
        ModelLoadError: the loader cannot take these arguments, or raises.
    """
    assert descriptor.loader is not None
    fn = import_loader(descriptor.loader)
    kwargs = dict(descriptor.kwargs)
    named, open_ended = _parameters(fn)
    if descriptor.weights:
        kwargs["weights"] = [str(p) for p in descriptor.weight_paths()]
    if "device" in named and "device" not in kwargs:
        kwargs["device"] = str(device)
    unknown = [] if open_ended else sorted(k for k in kwargs if k not in named)
    if unknown:
        raise ModelLoadError(f"field 'loader' = {descriptor.loader!r} takes no argument(s) {unknown} "
                             f"(it takes {sorted(named)}); fix 'kwargs' or 'weights'")
    try:
        return fn(**kwargs)
    except ModelLoadError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(f"loader {descriptor.loader} failed ({type(e).__name__}: {reason})") from e


def _parameters(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """The keyword parameters of ``fn``, and whether it takes any (``**kwargs``, or no signature)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {n for n, p in sig.parameters.items() if p.kind in kinds}
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def model_cutoff_A(potential: Potential) -> float | None:
    """The cutoff read from the model itself, in Å, for the cutoff check (``None``: none to read)."""
    if isinstance(potential, SchnetpackPotential):
        return find_cutoff_A(potential.model, potential.meta.position_unit)
    own = getattr(potential, "own_cutoff_A", None)
    return own() if callable(own) else None


def uncovered(potential: Potential | Descriptor, molecules: Iterable[Molecule]) -> dict[str, list[str]]:
    """The molecules holding elements the model does not cover, with those elements' symbols.

    The covered set is the descriptor's ``elements`` (or, for a potential, the elements it knows
    from its own files); without one, the potential's ``check_elements`` decides per molecule.
    A descriptor without ``elements`` covers everything.
    """
    covered = potential.atomic_numbers if isinstance(potential, Descriptor) else getattr(potential, "elements", None)
    check = None if isinstance(potential, Descriptor) else getattr(potential, "check_elements", None)
    out: dict[str, list[str]] = {}
    for m in molecules:
        present = sorted({int(z) for z in m.atoms.numbers})
        if covered is not None:
            missing = [symbol(z) for z in present if z not in covered]
        elif check is not None:
            missing = [symbol(z) for z in present if not _accepts(check, z)]
        else:
            missing = []
        if missing:
            out[m.name] = missing
    return out


def check_coverage(potential: Potential | Descriptor, molecules: Iterable[Molecule]) -> None:
    """Raise when a molecule holds an element the model does not cover (before any model call).

    Raises:
        ModelInterfaceError: naming each such molecule, its formula and the elements.
    """
    molecules = list(molecules)
    missing = uncovered(potential, molecules)
    if not missing:
        return
    formulas = {m.name: m.formula for m in molecules}
    if isinstance(potential, Descriptor):
        covered = potential.elements
    else:
        covered = _symbols(getattr(potential, "elements", None))
    what = "; ".join(f"molecule {name} ({formulas[name]}) has {', '.join(els)}" for name, els in missing.items())
    known = f" (it covers {', '.join(covered)})" if covered else ""
    raise ModelInterfaceError(f"elements outside the model's coverage: {what}{known}")


def _accepts(check: Callable[[set[int]], None], z: int) -> bool:
    try:
        check({z})
    except ModelInterfaceError:
        return False
    return True


def _symbols(numbers: frozenset[int] | None) -> list[str] | None:
    return None if numbers is None else [symbol(z) for z in sorted(numbers)]
