"""Where a candidate's code may run: the trust policy of :func:`mdgate.potentials.load`.

A model is one of three kinds (:func:`model_kind`):

- ``weights``: weights only, nothing in its files runs when it is loaded (today the state-dict
  format, :mod:`mdgate.potentials.spec`, read with ``torch.load(weights_only=True)``). It is
  loaded in the engine's process, as fast as ever.
- ``pickle``: a ``torch.save(model)`` file (schnetpack's ``best_model``). Unpickling runs code
  from the file: loaded only when the operator allows pickles (:attr:`Isolation.allow_pickles`),
  and then only in a model process.
- ``code``: a descriptor with a ``loader`` (an ASE calculator, torchani, a framework's own
  loader): the loader and what it imports run only in a model process.

The model process (:mod:`mdgate.potentials.remote`) holds no credentials, gets its own temporary
folder, and, where the kernel allows it, runs in its own user, network, PID and mount namespaces
with every file system read-only but that folder: it cannot reach the registry, see the gate's
processes or write anywhere else. The MD engine, the checks and the verdict never share a
process with candidate code.
"""

from __future__ import annotations

import fnmatch
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mdgate.errors import ModelLoadError
from mdgate.potentials.descriptor import Descriptor
from mdgate.potentials.spec import SPEC_FILE


class ModelKind(StrEnum):
    """What loading a model runs."""

    WEIGHTS = "weights"
    """Nothing: tensors read with ``weights_only=True`` into an architecture the engine builds."""
    PICKLE = "pickle"
    """Code from the file itself (``torch.save(model)``)."""
    CODE = "code"
    """The loader the descriptor names, and what it imports."""


class Isolation(BaseModel):
    """The trust policy for loading a model (the gate's settings or the CLI's options build it).

    ``None`` in place of an :class:`Isolation` (the library default of
    :func:`~mdgate.potentials.load`) means a trusted caller: everything in-process, pickles too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_pickles: bool = False
    """Load ``torch.save(model)`` files at all (always in a model process)."""
    model_process: Literal["auto", "always", "never"] = "auto"
    """``auto``: pickles and loaders in a model process, weights-only formats in-process;
    ``always``: every model in a model process; ``never``: everything in-process (a trusted
    caller only: the candidate's code then runs where the verdict is computed)."""
    sandbox: Literal["auto", "required", "off"] = "auto"
    """Namespaces around the model process (no network, no other processes, read-only files but
    its own folder): ``auto`` where the kernel allows them, ``required`` an Error where it does not,
    ``off`` only a clean environment and its own folder."""
    python: str | None = None
    """Interpreter of the model process (default: the engine's own)."""
    startup_timeout_s: float = Field(default=300.0, gt=0)
    """How long the model process may take to import its framework and load the model."""

    @classmethod
    def for_model(cls, name: str, allow_pickles: list[str] | str, **kwargs: object) -> Isolation:
        """The policy for registered model ``name``: pickles allowed when a pattern of
        ``allow_pickles`` (shell patterns, or one comma-separated string) matches it.
        """
        patterns = [p.strip() for p in allow_pickles.split(",")] if isinstance(allow_pickles, str) else allow_pickles
        allowed = any(p and fnmatch.fnmatchcase(name, p) for p in patterns)
        return cls(allow_pickles=allowed, **kwargs)  # type: ignore[arg-type]


def model_kind(descriptor: Descriptor) -> ModelKind:
    """What loading the model of ``descriptor`` runs."""
    if descriptor.loader is not None:
        return ModelKind.CODE
    if SPEC_FILE in descriptor.weights:
        return ModelKind.WEIGHTS
    return ModelKind.PICKLE


def in_model_process(descriptor: Descriptor, isolation: Isolation) -> bool:
    """Whether the model of ``descriptor`` must be loaded in a model process.

    Raises:
        ModelLoadError: it is a pickle and pickles are not allowed (how to store it instead, and how
            to allow pickles, in the message).
    """
    kind = model_kind(descriptor)
    if kind is ModelKind.PICKLE and not isolation.allow_pickles:
        name = descriptor.weights[0] if descriptor.weights else "the model"
        raise ModelLoadError(
            f"{name} is a pickle (torch.save(model)), and loading it would run code from the file; "
            "pickles are not allowed here. Store the model as weights + spec "
            "(`mdgate convert MODEL OUT_DIR`, then register OUT_DIR), or allow pickles for it "
            "(gate: MDGATE_ALLOW_PICKLES='<model-name pattern>'; CLI: --allow-pickle)")
    if isolation.model_process == "always":
        return True
    if isolation.model_process == "never":
        return False
    return kind is not ModelKind.WEIGHTS
