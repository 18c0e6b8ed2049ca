"""The model process's wire format: fixed little-endian headers and raw arrays, never pickle.

A request is :data:`REQUEST` (op, atoms, pairs, systems, torch threads) and its arrays; a reply
is :data:`REPLY` (status, payload size) and its payload: the energies and forces as float64, or a
JSON text for the start messages and errors. The engine reads a payload only after checking its
size against what it asked for.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mdgate.errors import ModelInterfaceError, ModelLoadError

# Wire format: every message is a header then payload, little-endian.
#: Request header: op, n_atoms, n_pairs, n_systems, torch threads.
REQUEST = struct.Struct("<IIIII")
#: Reply header: status, payload bytes.
REPLY = struct.Struct("<IQ")
OP_EVAL, OP_CHECK = 1, 2
OK, FAILED, INTERFACE, RAISED = 0, 1, 2, 3
"""Reply statuses: done; an mdgate error (its text); an interface error (its text); the model
itself raised (``{"type", "message"}``: raised here as the same built-in exception type)."""
#: Largest JSON message (sandbox report, model facts, error text) the engine reads.
MAX_TEXT = 65536


class ModelFacts(BaseModel):
    """What the model process says about the loaded model (validated, never trusted further)."""

    model_config = ConfigDict(extra="ignore")

    cutoff_A: float | None = None
    own_cutoff_A: float | None = None
    n_parameters: int = 0
    elements: list[int] | None = None
    uses_pairs: bool = True
    model_call: str = "eager"


class SandboxReport(BaseModel):
    """What the model process found about its confinement before loading anything."""

    model_config = ConfigDict(extra="ignore")

    namespaces: bool
    read_only: list[str]
    """Paths it could not write to (the probes)."""
    writable: list[str]
    """Probes it could write to (must be empty for a sandbox)."""
    network: bool
    """Whether it had any network interface up besides loopback, or could reach loopback."""
    secrets: list[str]
    """Names of variables it holds that look like credentials or servers (must be empty)."""


def read_exact(fd: int, n: int) -> bytes:
    """``n`` bytes from a pipe (``EOFError`` if it closes first)."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to a pipe."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from a socket (``EOFError`` if it closes first)."""
    buf = bytearray(n)
    view = memoryview(buf)
    while view:
        got = sock.recv_into(view)
        if not got:
            raise EOFError
        view = view[got:]
    return bytes(buf)


def read_reply(read: Callable[[int], bytes], what: str, expected: int | None = None) -> tuple[int, bytes]:
    """Read one reply: ``(status, payload)``; a payload of another size than ``expected`` (or an
    error text over :data:`MAX_TEXT`) is refused before it is read.
    """
    status, size = REPLY.unpack(read(REPLY.size))
    if status == OK and expected is not None and size != expected:
        raise ModelInterfaceError(f"the model process sent {size} bytes for {what}, expected {expected}")
    if (status != OK or expected is None) and size > MAX_TEXT:
        raise ModelInterfaceError(f"the model process sent {size} bytes for {what} (at most {MAX_TEXT})")
    return status, read(size)


def raise_for(status: int, payload: bytes) -> None:
    """Raise the error a reply of ``status`` carries."""
    text = payload.decode(errors="replace")[:2000]
    if status == RAISED:  # the model's own exception, as the engine would have seen it in-process
        try:
            data = json.loads(text)
            kind, message = str(data["type"]), str(data["message"])[:500]
        except (json.JSONDecodeError, KeyError, TypeError):
            kind, message = "RuntimeError", text[:500]
        exc = getattr(builtins, kind, None)
        if not (isinstance(exc, type) and issubclass(exc, Exception)):
            exc, message = RuntimeError, f"{kind}: {message}"
        raise exc(message)
    raise (ModelInterfaceError if status == INTERFACE else ModelLoadError)(text[:500])


def validated[M: BaseModel](model: type[M], data: Any, what: str) -> M:
    """``data`` (sent by the model process) validated as ``model``, else a one-line error."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ModelInterfaceError(f"the model process sent an invalid {what}: {str(e).splitlines()[0]}") from e
