"""The webhook receiver's checks, on the ASGI app (no servers): signature, timestamp, size,
duplicates. The end-to-end path through a real MLflow server is in test_gate.py.
"""

from __future__ import annotations

import json
import uuid

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature
from starlette.testclient import TestClient

from flows.webhook import create_app, sign, verify

SECRET = "s3cret"
NOW = 1_800_000_000.0


def event(name: str = "gate-m", version: str = "1", kind: str = "model_version.created") -> bytes:
    entity, action = kind.split(".")
    return json.dumps({"entity": entity, "action": action, "timestamp": "2026-11-25T00:00:00+00:00",
                       "data": {"name": name, "version": version, "source": "runs:/x/model", "run_id": "x",
                                "tags": {}, "description": None}}).encode()


def headers(body: bytes, secret: str = SECRET, timestamp: float = NOW, delivery: str | None = None) -> dict:
    delivery = delivery or str(uuid.uuid4())
    ts = str(int(timestamp))
    return {"X-MLflow-Signature": sign(secret, delivery, ts, body), "X-MLflow-Timestamp": ts,
            "X-MLflow-Delivery-Id": delivery, "Content-Type": "application/json"}


@pytest.fixture
def app() -> tuple[TestClient, list[tuple[str, str]]]:
    started: list[tuple[str, str]] = []

    async def start(name: str, version: str) -> str:
        started.append((name, version))
        return f"run-{len(started)}"

    client = TestClient(create_app(SECRET, start, tolerance_s=300, max_body_bytes=4096, clock=lambda: NOW,
                                   gates_model=lambda n: n.startswith("gate-")))
    return client, started


def test_signature_is_mlflows() -> None:
    body = event().decode()
    assert sign(SECRET, "d1", "123", body.encode()) == _generate_hmac_signature(SECRET, "d1", "123", body)


def test_valid_delivery_starts_one_gate(app: tuple[TestClient, list]) -> None:
    client, started = app
    body = event()
    h = headers(body)
    r = client.post("/mlflow", content=body, headers=h)
    assert r.status_code == 202 and r.json()["flow_run"] == "run-1"
    again = client.post("/mlflow", content=body, headers=h)  # MLflow's retry of the same delivery
    assert again.status_code == 403 and again.json()["status"] == "duplicate"  # a replay: refused
    assert started == [("gate-m", "1")]


@pytest.mark.parametrize("case,status", [
    ("missing", 401), ("forged", 403), ("wrong_secret", 403), ("stale", 403), ("future", 403),
    ("tampered", 403), ("bad_timestamp", 403),
])
def test_bad_deliveries_start_nothing(app: tuple[TestClient, list], case: str, status: int) -> None:
    client, started = app
    body = event()
    h = headers(body)
    if case == "missing":
        h.pop("X-MLflow-Signature")
    elif case == "forged":
        h["X-MLflow-Signature"] = "v1," + "A" * 44
    elif case == "wrong_secret":
        h = headers(body, secret="guess")
    elif case == "stale":
        h = headers(body, timestamp=NOW - 301)
    elif case == "future":
        h = headers(body, timestamp=NOW + 301)
    elif case == "tampered":
        body = event(version="2")
    else:
        h["X-MLflow-Timestamp"] = "yesterday"
    r = client.post("/mlflow", content=body, headers=h)
    assert r.status_code == status, r.text
    assert started == []


def test_size_limit_and_other_events(app: tuple[TestClient, list]) -> None:
    client, started = app
    big = b"{" + b" " * 5000 + b"}"
    assert client.post("/mlflow", content=big, headers=headers(big)).status_code == 413
    other = event(kind="model_version.tag_set")
    r = client.post("/mlflow", content=other, headers=headers(other))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    elsewhere = event(name="someone-elses-model")
    assert client.post("/mlflow", content=elsewhere, headers=headers(elsewhere)).json()["status"] == "ignored"
    junk = b"not json"
    assert client.post("/mlflow", content=junk, headers=headers(junk)).status_code == 400
    assert started == []


def test_prefect_down_is_retryable() -> None:
    async def start(name: str, version: str) -> str:
        raise ConnectionError("prefect down")

    client = TestClient(create_app(SECRET, start, clock=lambda: NOW))
    body = event()
    h = headers(body)
    assert client.post("/mlflow", content=body, headers=h).status_code == 503
    # the delivery was not recorded: MLflow's retry is acted on
    assert client.post("/mlflow", content=body, headers=h).status_code == 503


def test_verify_returns_delivery_id() -> None:
    body = event()
    h = {k.lower(): v for k, v in headers(body, delivery="abc").items()}
    assert verify(SECRET, h, body, NOW, 300) == "abc"
