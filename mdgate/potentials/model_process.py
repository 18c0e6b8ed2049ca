"""The model process: loads one model and answers energy-and-force requests on stdin/stdout.

Started by :class:`mdgate.potentials.remote.ModelProcess` (``python -m
mdgate.potentials.model_process``); the wire format is described there. Before the model is
loaded (before any of its code runs) the process reports its own confinement: which of the
engine's folders it cannot write, whether it has a network, which variables it holds. Then it
loads the model with the adapter of its framework, in this process (no further isolation), sends
the model's facts and serves requests on its socket, a thread per connection, until its stdin
closes.

Anything the model's code prints goes to stderr: stdout is the reply channel only.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import traceback
from typing import Any, BinaryIO

from mdgate.potentials import sandbox


def _reply(out: BinaryIO, status: int, payload: bytes) -> None:
    from mdgate.potentials.wire import REPLY

    out.write(REPLY.pack(status, len(payload)))
    out.write(payload)
    out.flush()


def _error(out: BinaryIO, e: BaseException, raised_by_model: bool = False) -> None:
    """Send an error: mdgate's own with its text; an exception the model raised while evaluating
    as its type and first line (the engine raises the same built-in type).
    """
    from mdgate.errors import MdgateError, ModelInterfaceError
    from mdgate.potentials.wire import FAILED, INTERFACE, RAISED

    first = (str(e).splitlines() or [""])[0]
    if isinstance(e, MdgateError):
        _reply(out, INTERFACE if isinstance(e, ModelInterfaceError) else FAILED, str(e)[:4000].encode())
    elif raised_by_model:
        _reply(out, RAISED, json.dumps({"type": type(e).__name__, "message": first[:1000]}).encode())
    else:
        _reply(out, FAILED, f"{type(e).__name__}: {first}"[:4000].encode())


def _read(inp: BinaryIO, n: int) -> bytes:
    data = inp.read(n)
    if len(data) != n:
        raise EOFError
    return data


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Load the model the first message names, answer requests on its socket (a thread per
    connection) until stdin closes.
    """
    (size,) = struct.unpack("<Q", _read(inp, 8))
    order = json.loads(_read(inp, size))
    _reply(out, 0, json.dumps(sandbox.report(order["probes"])).encode())

    import torch

    from mdgate.potentials import ModelMeta
    from mdgate.potentials.descriptor import parse_descriptor
    from mdgate.potentials.loading import ADAPTERS, model_cutoff_A

    torch.set_num_threads(max(1, int(order["threads"])))
    try:
        descriptor = parse_descriptor(order["descriptor"], "the engine's descriptor", order["root"])
        meta = ModelMeta.model_validate(order["meta"])
        device = torch.device(order["device"])
        potential = ADAPTERS[descriptor.framework](descriptor, meta, device)
        elements = getattr(potential, "elements", None)
        facts = {"cutoff_A": potential.cutoff_A, "own_cutoff_A": model_cutoff_A(potential),
                 "n_parameters": int(potential.n_parameters),
                 "elements": None if elements is None else sorted(int(z) for z in elements),
                 "uses_pairs": bool(getattr(potential, "uses_pairs", True)),
                 "model_call": str(getattr(potential, "model_call", "eager"))}
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(order["socket"])
        listener.listen(64)
    except BaseException as e:
        traceback.print_exc()
        _error(out, e)
        return
    _reply(out, 0, json.dumps(facts).encode())
    threading.Thread(target=_accept, args=(listener, potential, device), daemon=True).start()
    while inp.read(1 << 16):  # the engine closes stdin to end this process
        pass


def _accept(listener: socket.socket, potential: Any, device: Any) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_answer, args=(conn, potential, device), daemon=True).start()


def _answer(conn: socket.socket, potential: Any, device: Any) -> None:
    """Answer one connection's requests until it closes."""
    import numpy as np
    import torch

    from mdgate.potentials.wire import OP_CHECK, OP_EVAL, REQUEST, recv_exact

    out = conn.makefile("wb")
    with conn, out:
        while True:
            try:
                op, n, p, n_systems, threads = REQUEST.unpack(recv_exact(conn, REQUEST.size))
            except (EOFError, OSError):
                return
            if threads > 0 and threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            try:
                if op == OP_CHECK:
                    potential.check_elements({int(z) for z in np.frombuffer(recv_exact(conn, 8 * n), dtype="<i8")})
                    _reply(out, 0, b"")
                    continue
                if op != OP_EVAL:
                    raise ValueError(f"unknown request {op}")
                raw = np.frombuffer(recv_exact(conn, 8 * (5 * n + 2 * p)), dtype=np.uint8)
                cut = np.cumsum([0, 8 * n, 24 * n, 8 * n, 8 * p, 8 * p])
                numbers, positions, system_idx, idx_i, idx_j = (
                    torch.from_numpy(raw[a:b].view(t).copy()).to(device)
                    for a, b, t in zip(cut[:-1], cut[1:], ("<i8", "<f8", "<i8", "<i8", "<i8"), strict=True))
                energy, forces = potential(numbers, positions.reshape(n, 3), system_idx, n_systems, idx_i, idx_j)
                result = np.concatenate([energy.detach().cpu().to(torch.float64).reshape(-1).numpy(),
                                         forces.detach().cpu().to(torch.float64).reshape(-1).numpy()])
                if result.size != n_systems + 3 * n:
                    raise ValueError(f"the adapter returned {result.size} numbers, expected {n_systems + 3 * n}")
                _reply(out, 0, result.astype("<f8", copy=False).tobytes())
            except (EOFError, BrokenPipeError, ConnectionResetError):
                return
            except Exception as e:
                _error(out, e, raised_by_model=True)


def main() -> None:
    """Entry point: stdout is kept for replies; everything else printed goes to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        serve(sys.stdin.buffer, out)
    finally:
        os._exit(0)  # the connection threads end with the process


if __name__ == "__main__":
    main()
