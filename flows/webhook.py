"""HTTP receiver for MLflow webhooks: ``model_version.created`` starts the gate deployment.

Security (design.md section 6): the body is refused above a size limit before it is read
(413); the HMAC-SHA256 signature (``X-MLflow-Signature: v1,<base64>`` over
``"{delivery_id}.{timestamp}.{body}"``) is compared in constant time (missing headers: 401,
wrong signature: 403); the timestamp must be within a replay window (403); a delivery id
already received is a replay (403; MLflow does not retry a 4xx), also while the first copy is
still being acted on. Nothing is started for a rejected request, and the receiver never loads a
model: it only creates a run of the gate deployment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"

StartGate = Callable[[str, str], Awaitable[str]]
"""``start_gate(name, version) -> flow run id``; the serve command gives the helper the sweep uses too
(``flows.sweep.start_gate_for_version``: create the gate run, claim the version for it). This module
itself imports nothing that can load a model."""


class WebhookRejected(Exception):
    """Raised when a delivery fails verification; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` MLflow sends for this delivery."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, now: float, tolerance_s: float) -> str:
    """Check signature and timestamp of a delivery; return its delivery id.

    Raises:
        WebhookRejected: 401 without the signature headers, 403 for a wrong signature or a
            timestamp outside the replay window.
    """
    signature = headers.get(SIGNATURE_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    delivery_id = headers.get(DELIVERY_HEADER, "")
    if not signature or not timestamp or not delivery_id:
        raise WebhookRejected(401, "missing signature, timestamp or delivery id header")
    expected = sign(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRejected(403, "signature does not match")
    try:
        sent = int(timestamp)
    except ValueError as e:
        raise WebhookRejected(403, "malformed timestamp") from e
    if abs(now - sent) > tolerance_s:
        raise WebhookRejected(403, f"timestamp outside the {tolerance_s:g} s replay window")
    return delivery_id


class _SeenDeliveries:
    """Delivery ids acted on within the replay window (older ones fail the timestamp check)."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._seen: dict[str, float] = {}

    def __contains__(self, delivery_id: str) -> bool:
        now = time.monotonic()
        self._seen = {k: t for k, t in self._seen.items() if now - t < self.ttl_s}
        return delivery_id in self._seen

    def add(self, delivery_id: str) -> None:
        self._seen[delivery_id] = time.monotonic()

    def discard(self, delivery_id: str) -> None:
        self._seen.pop(delivery_id, None)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise WebhookRejected(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRejected(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(secret: str, start_gate: StartGate, tolerance_s: float = 300.0,
               max_body_bytes: int = 256 * 1024, clock: Callable[[], float] = time.time,
               gates_model: Callable[[str], bool] = lambda name: True) -> Starlette:
    """The receiver as an ASGI app: ``POST /mlflow`` (webhooks), ``GET /health``.

    Args:
        secret: the webhook's HMAC secret.
        start_gate: starts the gate deployment for ``(name, version)``; returns the flow run id.
        tolerance_s: replay window of the timestamp.
        max_body_bytes: body size limit.
        clock: the time in Unix seconds (tests replace it).
        gates_model: which registered models to gate (others are acknowledged and ignored).
    """
    if not secret:
        raise ValueError("the webhook receiver needs a secret")
    seen = _SeenDeliveries(2 * tolerance_s)

    async def receive(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, max_body_bytes)
            delivery_id = verify(secret, {k.lower(): v for k, v in request.headers.items()}, body,
                                 clock(), tolerance_s)
        except WebhookRejected as e:
            return JSONResponse({"error": e.reason}, status_code=e.status)
        if delivery_id in seen:
            return JSONResponse({"error": "delivery already received (replay)", "status": "duplicate",
                                 "delivery_id": delivery_id}, status_code=403)
        seen.add(delivery_id)  # before any await: concurrent copies of this delivery are replays
        try:
            event = json.loads(body)
            kind = f"{event['entity']}.{event['action']}"
            data = event.get("data") or {}
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "body is not an MLflow webhook event"}, status_code=400)
        if kind != "model_version.created":
            return JSONResponse({"status": "ignored", "event": kind})
        name, version = data.get("name"), data.get("version")
        if not isinstance(name, str) or not name or version in (None, ""):
            return JSONResponse({"error": "model_version.created without name and version"}, status_code=400)
        if not gates_model(name):
            return JSONResponse({"status": "ignored", "model": name})
        try:
            flow_run = await start_gate(name, str(version))
        except Exception as e:  # MLflow retries 5xx: the event is not lost to a Prefect hiccup
            seen.discard(delivery_id)
            return JSONResponse({"error": f"cannot start the gate: {type(e).__name__}"}, status_code=503)
        return JSONResponse({"status": "started", "flow_run": flow_run}, status_code=202)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/mlflow", receive, methods=["POST"]), Route("/health", health)])
