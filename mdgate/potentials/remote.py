"""A model in a process of its own: :class:`RemotePotential` is the engine's side of it.

The model process (``python -m mdgate.potentials.model_process``) loads the model with the
adapter of its framework and answers one request per engine call: the whole batch's positions
in, energies and forces out, as raw little-endian arrays with fixed headers (never pickle:
nothing the model process sends is executed here). What it sends is checked for size; a
malformed or missing answer is a :class:`~mdgate.errors.ModelInterfaceError`.

Its stdin and stdout carry the start (what to load; the sandbox report, the model's facts), and
its stdin's end is its end. Requests go over a Unix socket in its folder, one connection per
engine thread: the gate's MD lanes, in threads or in worker processes of the same machine (a
:class:`RemotePotential` pickled into them connects to the same model process), are served in
parallel by one model process.

The process gets a clean environment (``PATH``, locale and thread settings; no ``MLFLOW_*``,
``MDGATE_*``, ``PREFECT_*``, ``AWS_*`` or any other variable), its own temporary folder as home,
working and temporary directory, and, with :attr:`Isolation.sandbox` ``auto`` where ``unshare``
works, new user, network, PID and mount namespaces with every mount read-only but that folder.
The sandbox is checked from inside before the model is loaded, and reported by
:attr:`RemotePotential.sandbox`.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdgate.errors import ModelInterfaceError, ModelLoadError
from mdgate.potentials import ModelMeta, sandbox
from mdgate.potentials.descriptor import Descriptor, symbol
from mdgate.potentials.isolation import Isolation
from mdgate.potentials.sandbox import namespaces_available
from mdgate.potentials.wire import (
    OK,
    OP_CHECK,
    OP_EVAL,
    REQUEST,
    ModelFacts,
    SandboxReport,
    raise_for,
    read_exact,
    read_reply,
    recv_exact,
    validated,
    write_all,
)

__all__ = ["ModelProcess", "RemotePotential", "namespaces_available"]


class ModelProcess:
    """One model process, started and stopped by its owner; see the module docstring."""

    def __init__(self, descriptor: Descriptor, meta: ModelMeta, device: torch.device, isolation: Isolation,
                 probes: list[str]):
        self.folder = Path(tempfile.mkdtemp(prefix="mdgate-model-"))
        self.socket_path = str(self.folder / "model.sock")
        self._stderr_path = self.folder / "stderr.log"
        reason = None
        sandboxed = isolation.sandbox != "off" and (reason := sandbox.namespaces_available()) is None
        if isolation.sandbox == "required" and not sandboxed:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise ModelLoadError(f"the model process must run sandboxed (sandbox: required) but cannot here: {reason}")
        cmd = [isolation.python or sys.executable, "-m", "mdgate.potentials.model_process"]
        if sandboxed:
            cmd = sandbox.command(self.folder, cmd)
        env = {k: os.environ[k] for k in sandbox.KEEP_ENV if k in os.environ}
        # The engine's import path beyond its site-packages (the model's own classes may live
        # beside the engine; a model environment has the engine's site-packages after its own, and
        # PYTHONPATH would put them first). Its folder is its working directory: nothing there
        # shadows a module.
        installed = {str(Path(p).resolve()) for p in site.getsitepackages()}
        path = [p for p in sys.path if p and Path(p).is_dir() and str(Path(p).resolve()) not in installed
                and not str(Path(p).resolve()).startswith(str(Path(sys.base_prefix).resolve()))]
        env.update(HOME=str(self.folder), TMPDIR=str(self.folder), PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=os.pathsep.join(path))
        with open(self._stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         cwd=self.folder, env=env, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.folder)
        # A model process that takes too long to import its framework and load the model is stopped.
        timer = threading.Timer(isolation.startup_timeout_s, self.proc.kill)
        timer.start()
        try:
            self.sandbox = self._start(descriptor, meta, device, probes, sandboxed)
            self.facts = validated(ModelFacts, self._json("the model's facts"), "the model's facts")
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()

    def _start(self, descriptor: Descriptor, meta: ModelMeta, device: torch.device, probes: list[str],
               sandboxed: bool) -> SandboxReport:
        """Send what to load; read the sandbox report (written before any model code ran)."""
        order = {"descriptor": descriptor.model_dump(mode="json"),
                 "root": None if descriptor.root is None else str(descriptor.root),
                 "meta": meta.model_dump(mode="json"), "device": str(device), "probes": probes,
                 "threads": torch.get_num_threads(), "socket": self.socket_path}
        body = json.dumps(order).encode()
        assert self.proc.stdin is not None
        write_all(self.proc.stdin.fileno(), struct.pack("<Q", len(body)) + body)
        report = validated(SandboxReport, self._json("the sandbox report"), "the sandbox report")
        if sandboxed and (not report.namespaces or report.writable or report.network or report.secrets):
            raise ModelLoadError(f"the model process's sandbox leaks: {report.model_dump_json()}")
        if not sandboxed and report.secrets:
            raise ModelLoadError(f"the model process holds variables it must not: {report.secrets}")
        return report

    def _json(self, what: str) -> Any:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        try:
            status, payload = read_reply(lambda n: read_exact(fd, n), what)
        except (EOFError, OSError) as e:
            raise self.died(what) from e
        if status != OK:
            raise_for(status, payload)
        try:
            return json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelInterfaceError(f"the model process sent {what} that is not JSON ({e})") from e

    def died(self, what: str) -> ModelLoadError:
        """The error for a model process that stopped answering (with its last line on stderr)."""
        code = self.proc.poll()
        if code is None:
            try:
                code = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
        tail = self.stderr_tail()
        how = "was stopped (it took too long)" if code in (-9, 137) else f"ended (exit {code})"
        return ModelLoadError(f"the model process {how} before sending {what}" + (f": {tail}" if tail else ""))

    def stderr_tail(self, n: int = 300) -> str:
        """The last line of what the model process wrote to stderr (at most ``n`` characters)."""
        try:
            lines = [ln for ln in self._stderr_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][-n:] if lines else ""

    def close(self) -> None:
        """Stop the process and remove its folder."""
        self._finalizer()


def _stop(proc: subprocess.Popen, folder: Path) -> None:
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    shutil.rmtree(folder, ignore_errors=True)


class Connection:
    """One engine thread's connection to a model process's socket."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def request(self, op: int, arrays: list[np.ndarray], header: tuple[int, int, int], expected: int | None,
                what: str) -> bytes:
        """One request and its reply's payload."""
        self.sock.sendall(REQUEST.pack(op, *header, torch.get_num_threads())
                          + b"".join(a.tobytes() for a in arrays))
        status, payload = read_reply(lambda n: recv_exact(self.sock, n), what, expected)
        if status != OK:
            raise_for(status, payload)
        return payload

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class RemotePotential:
    """A :class:`~mdgate.potentials.LoadedPotential` evaluated by a model process.

    Args:
        descriptor: the model's descriptor (its files are read by the model process).
        meta: units, keys, cutoff.
        device: where the model process evaluates and where the returned tensors live.
        isolation: the policy (interpreter, sandbox, startup timeout).
        probes: paths the sandbox must not be able to write (the gate's work and home folders).

    The object that started the model process owns it (stopped by :meth:`close` or when the
    object is collected). Pickled into a worker process of the same machine, it connects to the
    same model process; where that socket is not there (another machine), it starts its own.
    """

    def __init__(self, descriptor: Descriptor, meta: ModelMeta, device: torch.device, isolation: Isolation,
                 probes: list[str] | None = None):
        self.descriptor = descriptor
        self.meta = meta
        self.device = device
        self.isolation = isolation
        self.probes = list(probes or [])
        self._local = threading.local()
        self._connections: list[Connection] = []
        """Every thread's connection (closed with :meth:`close`)."""
        self._process: ModelProcess | None = ModelProcess(descriptor, meta, device, isolation, self.probes)
        self.socket_path = self._process.socket_path
        self.sandbox_report = self._process.sandbox
        facts = self._process.facts
        self.cutoff_A: float | None = facts.cutoff_A
        self._own_cutoff_A = facts.own_cutoff_A
        self.n_parameters = facts.n_parameters
        self.uses_pairs = facts.uses_pairs
        self.model_call = facts.model_call
        self.elements: frozenset[int] | None = None if facts.elements is None else frozenset(facts.elements)

    @property
    def sandbox(self) -> str:
        """How the model process is confined, in words (for the report and the audit trail)."""
        if self.sandbox_report.namespaces:
            return ("model process in its own namespaces (no network, read-only files but its own folder, "
                    "no credentials)")
        return "model process with a clean environment and its own folder (no namespaces on this machine)"

    def _connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = Connection(self.socket_path)
            except OSError:
                if self._process is not None:
                    raise self._process.died("a connection") from None
                # Unpickled where the owner's model process is not reachable: start one here.
                self._process = ModelProcess(self.descriptor, self.meta, self.device, self.isolation, self.probes)
                self.socket_path = self._process.socket_path
                conn = Connection(self.socket_path)
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    def _request(self, op: int, arrays: list[np.ndarray], header: tuple[int, int, int], expected: int | None,
                 what: str) -> bytes:
        conn = self._connection()
        try:
            return conn.request(op, arrays, header, expected, what)
        except (EOFError, OSError) as e:
            conn.close()
            self._local.conn = None
            if conn in self._connections:
                self._connections.remove(conn)
            if self._process is not None:
                raise self._process.died(what) from e
            raise ModelLoadError(f"the model process stopped answering before sending {what}") from e

    def close(self) -> None:
        """Close this object's connections, and stop the model process if this object started it
        (it also stops when the object is collected).
        """
        while self._connections:
            self._connections.pop().close()
        self._local = threading.local()
        if self._process is not None:
            self._process.close()
            self._process = None

    def __getstate__(self) -> dict:
        """Pickled without the process (the owner keeps it) and without connections."""
        state = self.__dict__.copy()
        state.pop("_local")
        state["_process"] = None
        state["_connections"] = []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def own_cutoff_A(self) -> float | None:
        """The cutoff the model process read from the model itself, in Å."""
        return self._own_cutoff_A

    def check_elements(self, numbers: list[int] | set[int]) -> None:
        """Raise :class:`ModelInterfaceError` for elements the model does not cover."""
        if self.elements is not None:
            missing = sorted({int(z) for z in numbers} - self.elements)
            if missing:
                raise ModelInterfaceError(
                    f"elements {', '.join(symbol(z) for z in missing)} are not covered by the model "
                    f"(it covers {', '.join(symbol(z) for z in sorted(self.elements))})")
            return
        z = np.asarray(sorted({int(z) for z in numbers}), dtype="<i8")
        self._request(OP_CHECK, [z], (z.size, 0, 0), None, "the element check")

    def __call__(self, numbers: torch.Tensor, positions_A: torch.Tensor, system_idx: torch.Tensor,
                 n_systems: int, idx_i: torch.Tensor, idx_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (eV, ``[n_systems]``) and forces (eV/Å, ``[n_atoms, 3]``), float64."""
        n, p = int(numbers.numel()), int(idx_i.numel())
        arrays = [numbers.detach().cpu().numpy().astype("<i8", copy=False),
                  positions_A.detach().cpu().numpy().astype("<f8", copy=False),
                  system_idx.detach().cpu().numpy().astype("<i8", copy=False),
                  idx_i.detach().cpu().numpy().astype("<i8", copy=False),
                  idx_j.detach().cpu().numpy().astype("<i8", copy=False)]
        payload = self._request(OP_EVAL, arrays, (n, p, n_systems), 8 * (n_systems + 3 * n), "energies and forces")
        out = np.frombuffer(payload, dtype="<f8")
        energy = torch.from_numpy(out[:n_systems].copy())
        forces = torch.from_numpy(out[n_systems:].reshape(n, 3).copy())
        if self.device.type != "cpu":
            energy, forces = energy.to(self.device), forces.to(self.device)
        return energy, forces
