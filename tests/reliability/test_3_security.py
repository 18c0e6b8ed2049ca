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
