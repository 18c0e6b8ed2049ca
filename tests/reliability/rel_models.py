"""Models and pickles that misbehave, for the reliability suite (importable as
``tests.reliability.rel_models``: the gate's flow-run processes unpickle them with the
repository root on ``PYTHONPATH``).

Every wrapper delegates to a real schnetpack model, so that the gate reaches the step where the
model misbehaves (loading, the first evaluation, MD) with everything before it valid.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn


class _Wrapper(nn.Module):
    """A schnetpack potential wrapped; ``calls`` counts forward calls in this process."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.model.do_postprocessing = True
        self.calls = 0

    def inner(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The wrapped model's outputs (a fresh dict)."""
        self.calls += 1
        return dict(self.model(inputs))


class SlowModel(_Wrapper):
    """The wrapped model, ``delay_s`` slower per call (sleeping: it costs no CPU)."""

    def __init__(self, model: nn.Module, delay_s: float):
        super().__init__(model)
        self.delay_s = delay_s

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sleep, then evaluate the wrapped model."""
        time.sleep(self.delay_s)
        return self.inner(inputs)


class RaisingModel(_Wrapper):
    """Raises in forward. Its message carries the process's webhook secret (or ``<absent>``):
    the gate puts the message into ``mdgate.reason``, so a secret the worker leaves in the
    environment of model code would leak into the registry.
    """

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raise RuntimeError."""
        secret = os.environ.get("MDGATE_WEBHOOK_SECRET", "<absent>")
        raise RuntimeError(f"shape mismatch in layer 3 (MDGATE_WEBHOOK_SECRET={secret})")


class InfModel(_Wrapper):
    """Energies and forces are +inf from the ``after``-th call on (0: always)."""

    def __init__(self, model: nn.Module, after: int = 0):
        super().__init__(model)
        self.after = after

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The wrapped outputs, replaced by inf once ``after`` calls were made."""
        out = self.inner(inputs)
        if self.calls > self.after:
            out = {k: torch.full_like(v, float("inf")) for k, v in out.items()}
        return out


class HangingModel(_Wrapper):
    """Never returns from forward once ``after`` calls were made: one long C-level sleep, which
    no exception injected into its thread can interrupt.
    """

    def __init__(self, model: nn.Module, after: int = 0):
        super().__init__(model)
        self.after = after

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Evaluate, or hang for an hour."""
        if self.calls >= self.after:
            time.sleep(3600)
        return self.inner(inputs)


class NoCutoffModel(nn.Module):
    """A conservative pair potential over all atom pairs with no cutoff anywhere in it (no module
    has a ``cutoff`` attribute): energies and -dE/dR forces of the right shapes.
    """

    def __init__(self, k_eV: float = 0.1, r0_A: float = 1.4):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k_eV))
        self.r0_A = r0_A

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Harmonic pair energy summed per molecule; forces by autograd."""
        pos = inputs["_positions"]
        if not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        i, j, idx_m = inputs["_idx_i"], inputs["_idx_j"], inputs["_idx_m"]
        d = (pos[i] - pos[j]).norm(dim=1)
        pair = 0.5 * self.k * (d - self.r0_A) ** 2
        n = int(inputs["_n_atoms"].numel())
        energy = torch.zeros(n, dtype=pair.dtype).index_add(0, idx_m[i], 0.5 * pair)
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=False)
        return {"energy": energy, "forces": -grad}


class Canary:
    """Not a model: unpickling it appends the unpickling process's id to ``path``.

    It shows which process loads a registered artifact: the gate's model process (whose sandbox
    keeps it from writing the file), never the webhook receiver or the gate's flow-run process.
    """

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_record_loader, (self.path,))


def _record_loader(path: str) -> list[int]:
    try:
        with Path(path).open("a") as f:
            f.write(f"{os.getpid()}\n")
    except OSError:  # a sandboxed model process: everything read-only but its own folder
        pass
    return [os.getpid()]


class Payload:
    """A pickle that runs code when loaded: unpickling writes ``path``. ``torch.load(...,
    weights_only=True)`` must refuse it without running it.
    """

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("pickle code ran",))
