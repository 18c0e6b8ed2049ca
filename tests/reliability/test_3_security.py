"""Security of the trigger and the loader.

Signed webhooks only, compared in constant time, no replays; the receiver never loads a model;
weights + architecture spec load with ``weights_only=True``. That the secret never reaches logs,
tags or reports is checked at the end of the suite (test_5), over everything the suite wrote.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from flows import webhook
from flows.webhook import create_app, sign
from tests.integration import flow_runs_named, wait_for_status
from tests.reliability.conftest import (
    META_TAGS,
    REPO_ROOT,
    SECRET,
    Models,
    RelStack,
    Sources,
    Tally,
    Worker,
    paused_webhook,
    unique,
    validation_runs,
)


def event(name: str, version: str) -> bytes:
    return json.dumps({"entity": "model_version", "action": "created", "timestamp": "2026-11-25T00:00:00Z",
                       "data": {"name": name, "version": version, "source": "", "run_id": None, "tags": {},
                                "description": None}}).encode()


def headers(body: bytes, delivery: str, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    ts = str(int(time.time() if at is None else at))
    return {"X-MLflow-Signature": sign(secret, delivery, ts, body), "X-MLflow-Timestamp": ts,
            "X-MLflow-Delivery-Id": delivery, "Content-Type": "application/json"}


@pytest.mark.integration
@pytest.mark.slow
def test_unsigned_forged_stale_and_replayed_webhooks_start_nothing(
        worker: Worker, rel_stack: RelStack, rel_registry: Any, sources: Sources, models: Models,
        tally: Tally) -> None:
    name = unique("sec")
    with paused_webhook(rel_registry):
        version = sources.register(name, "bad", {"model.pt": models.bad}, META_TAGS)
    tally.expect(name, version, "Rejected")
    body = event(name, version)
    tags_before = rel_registry.get_version(name, version).tags
    missing = {k: v for k, v in headers(body, "s-missing").items() if k != "X-MLflow-Signature"}
    no_delivery = {k: v for k, v in headers(body, "s-nodelivery").items() if k != "X-MLflow-Delivery-Id"}
    forged = headers(body, "s-forged")
    forged["X-MLflow-Signature"] = "v1," + "A" * 44
    cases = {
        "missing signature": (missing, 401), "missing delivery id": (no_delivery, 401),
        "forged signature": (forged, 403), "wrong secret": (headers(body, "s-wrong", secret="guess"), 403),
        "stale timestamp (an old delivery replayed)": (headers(body, "s-stale", at=time.time() - 3600), 403),
        "timestamp in the future": (headers(body, "s-future", at=time.time() + 3600), 403),
        "body changed after signing": (headers(event(name, "999"), "s-tampered"), 403),
    }
    answers = {case: httpx.post(rel_stack.webhook_url, content=body, headers=h, timeout=30).status_code
               for case, (h, _) in cases.items()}
    assert answers == {case: status for case, (_, status) in cases.items()}
    time.sleep(3)
    assert flow_runs_named(f"gate/{name}/v{version}") == []
    assert rel_registry.get_version(name, version).tags == tags_before
    # a valid delivery starts one gate; the same request sent again is a replay: refused
    valid = headers(body, "s-valid")
    first = httpx.post(rel_stack.webhook_url, content=body, headers=valid, timeout=30)
    assert first.status_code == 202, first.text
    replay = httpx.post(rel_stack.webhook_url, content=body, headers=valid, timeout=30)
    assert replay.status_code in (401, 403), (replay.status_code, replay.text)
    info, _ = wait_for_status(rel_registry, name, version, timeout_s=300)
    again = httpx.post(rel_stack.webhook_url, content=body, headers=valid, timeout=30)
    assert again.status_code in (401, 403)
    time.sleep(2)
    runs = flow_runs_named(f"gate/{name}/v{version}")
    assert len(runs) == 1 and str(runs[0].id) == first.json()["flow_run"]
    assert info.status.value == "Rejected" and info.claim == 1
    assert len(validation_runs(rel_registry, name, version)) == 1


def test_signature_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    source = inspect.getsource(webhook.verify)
    assert "hmac.compare_digest(" in source
    assert "== signature" not in source and "signature ==" not in source and "!= signature" not in source
    calls: list[tuple[bytes, bytes]] = []
    real = webhook.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhook.hmac, "compare_digest", spy)
    started: list[tuple[str, str]] = []

    async def start(name: str, version: str) -> str:
        started.append((name, version))
        return "run"

    client = TestClient(create_app("k" * 32, start, clock=time.time))
    body = event("rel-x", "1")
    good = headers(body, "d1", secret="k" * 32)
    # wrong signatures that share a long prefix with the right one, or none of it: all refused
    for prefix in (0, 10, 40):
        h = dict(good, **{"X-MLflow-Delivery-Id": f"p{prefix}"})
        right = sign("k" * 32, f"p{prefix}", h["X-MLflow-Timestamp"], body)
        h["X-MLflow-Signature"] = right[:prefix] + ("B" if right[prefix] != "B" else "C") + right[prefix + 1:]
        assert client.post("/mlflow", content=body, headers=h).status_code == 403
    assert client.post("/mlflow", content=body, headers=good).status_code == 202
    assert len(calls) == 4 and started == [("rel-x", "1")]


def test_receiver_never_loads_a_model() -> None:
    source = Path(webhook.__file__).read_text()
    for forbidden in ("torch", "pickle", "load_module", "load_potential", "registry.artifacts", "mdgate"):
        assert forbidden not in source.split('"""', 2)[-1], forbidden
    probe = ("import sys, flows.webhook; "
             "print(sorted(m for m in ('torch', 'schnetpack', 'mdgate', 'registry', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    # behaviour: the canary pickle of test_1 recorded which processes unpickled it (not the receiver)


@pytest.mark.integration
@pytest.mark.slow
def test_state_dict_model_loads_weights_only_and_is_gated(worker: Worker, rel_registry: Any,
                                                          tally: Tally, tmp_path: Path) -> None:
    from mdgate.potentials.spec import load_state_dict_model, save_state_dict_model
    from registry.register import register_potential
    from tests.models import GOOD_MODEL

    folder = save_state_dict_model(torch.load(GOOD_MODEL, weights_only=False), tmp_path / "painn_small")
    assert sorted(p.name for p in folder.iterdir()) == ["architecture.json", "state_dict.pt"]
    torch.load(folder / "state_dict.pt", weights_only=True)  # plain tensors only
    load_state_dict_model(folder)
    name = unique("sd")
    info = register_potential(rel_registry, folder, name, meta={"level_of_theory": "GFN2-xTB"})
    tally.expect(name, info.version, "Approved")
    files = {a.path for a in rel_registry.client.list_artifacts(info.run_id, "model")}
    assert files == {"model/architecture.json", "model/state_dict.pt"}
    done, _ = wait_for_status(rel_registry, name, info.version, timeout_s=300)
    assert done.status.value == "Approved", done.reason


def _log_pickle(registry: Any, name: str, module: torch.nn.Module, folder: Path) -> str:
    """Register ``module`` as anyone can with plain MLflow: ``torch.save`` under a run's ``model/``
    artifact, a version of it with the usual metadata tags. Nothing here unpickles it.
    """
    folder.mkdir(parents=True)
    torch.save(module, folder / "model.pt")
    client = registry.client
    run = client.create_run("0", run_name=f"hostile/{name}")
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                     tags={**META_TAGS, "mdgate.status": "Pending"})
    return str(mv.version)


def _gate_locally(env: dict[str, str], name: str, version: str,
                  force: bool = False) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "mdgate"), "gate", name, version, "--local"]
    cmd += ["--force"] if force else []
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)


@pytest.mark.integration
@pytest.mark.slow
def test_a_hostile_pickle_cannot_touch_the_registry_or_the_verdict(worker: Worker, rel_registry: Any,
                                                                   untrained_model_path: Path, tally: Tally,
                                                                   tmp_path: Path) -> None:
    """An untrained PaiNN wrapped in a pickle whose loading (a) writes Approved and the alias on
    its own version, (b) replaces the verdict function, (c) reads the tracking URI and credentials,
    (d) writes outside its folder (``tests/reliability/hostile.py``).

    In the engine's own process the attack works (shown first, on a model of its own). Gated:
    with pickles not allowed, Error and nothing loaded; allowed, the model runs in the sandboxed
    model process, none of (a)-(d) gets anywhere, and the version is Rejected.
    """
    from tests.reliability.hostile import Hostile

    untrained = torch.load(untrained_model_path, weights_only=False)
    # The attack is real: loaded in a process that holds the tracking URI, it wins.
    control = f"hostile-control-{uuid.uuid4().hex[:6]}"
    control_marker = tmp_path / "control-marker.json"
    _log_pickle(rel_registry, control, Hostile(untrained, control, "1", str(control_marker)), tmp_path / "control")
    code = "import sys; from mdgate.potentials import load; load(sys.argv[1], 'cpu')"
    load = subprocess.run([sys.executable, "-c", code, str(tmp_path / "control" / "model.pt")], env=worker.env(),
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert load.returncode == 0, load.stderr[-2000:]
    found = json.loads(control_marker.read_text())
    assert found["registry"] == "written" and found["patched"] and found["tracking_uri"], found
    assert rel_registry.get_version(control, "1").status.value == "Approved"
    assert rel_registry.client.get_model_version_by_alias(control, "approved").version == "1"

    name = f"hostile-{uuid.uuid4().hex[:6]}"  # outside the worker's rel-*: gated only when asked
    marker = tmp_path / "gate-marker.json"
    version = _log_pickle(rel_registry, name, Hostile(untrained, name, "1", str(marker)), tmp_path / "gated")
    assert version == "1"
    tally.expect(name, version, "Rejected")

    # Pickles not allowed (the default): Error, saying how to store it; nothing was loaded.
    refused = _gate_locally(worker.env(MDGATE_ALLOW_PICKLES=""), name, version)
    info = rel_registry.get_version(name, version)
    assert info.status.value == "Error", (info.reason, refused.stdout[-1000:], refused.stderr[-2000:])
    assert "pickle" in info.reason and "mdgate convert" in info.reason, info.reason
    assert not marker.exists()

    # Allowed: loaded and evaluated in the model process; the verdict is the engine's.
    gated = _gate_locally(worker.env(MDGATE_ALLOW_PICKLES="hostile-*"), name, version, force=True)
    time.sleep(3.0)  # the attack's thread would have written Approved again by now, had it reached the server
    info = rel_registry.get_version(name, version)
    assert info.status.value == "Rejected", (info.reason, gated.stdout[-1000:], gated.stderr[-3000:])
    assert gated.returncode == 1, gated.stdout[-1000:]
    assert not marker.exists(), marker.read_text()
    with pytest.raises(Exception, match="approved"):
        rel_registry.client.get_model_version_by_alias(name, "approved")
    events = rel_registry.history(name, version)
    statuses = [e.status for e in events if e.status]
    assert statuses[0] == "Error" and statuses[-1] == "Rejected" and "Approved" not in statuses, events
    assert all(e.decided_by == "mdgate" for e in events), events
    # the audit trail says where the candidate's code ran for its verdict
    assert events[-1].model_ran.startswith("model process in its own namespaces"), events[-1]
    result = json.loads(Path(rel_registry.client.download_artifacts(info.validation_run, "results.json",
                                                                       str(tmp_path))).read_text())
    assert result["model"]["runs_in"].startswith("model process in its own namespaces"), result["model"]
    assert result["verdict"] == "Rejected"
    tally.bad_inputs["hostile pickle: refused, then sandboxed and rejected"] = True
