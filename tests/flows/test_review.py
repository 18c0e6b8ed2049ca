"""Human review and champion comparison end to end on real MLflow and Prefect servers.

A borderline candidate ends PendingReview, its gate flow run pauses with the review form, a
reviewer's input through the Prefect API resumes it, and the version ends Approved with
``mdgate.decided_by`` the reviewer; the audit trail holds the automatic outcome, the review and
the alias move in order. A candidate that passes every absolute bound but is much worse than the
champion is Rejected, naming the champion, and each final decision arrives at a local
receiver through the Prefect notification block.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from uuid import UUID

import pytest

from registry import Registry, Status
from registry import types as T
from registry.register import register_potential
from tests.integration import REPO_ROOT, ModelFile, Stack, record_timing, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODELS = REPO_ROOT / "examples" / "models"


def test_borderline_candidate_waits_for_a_reviewer_through_prefect(stack: Stack, registry: Registry,
                                                                   good_model: ModelFile, small_set,
                                                                   tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    name = f"review-{uuid.uuid4().hex[:6]}"  # not gate-*: the served gate (if any) leaves it alone
    v = register_potential(registry, good_model.path, name, meta=good_model.meta,
                           reference=small_set.reference).version
    # Margin 1.0: any required check that passes counts as borderline (force R² 0.97 vs 0.9).
    env = dict(os.environ, **stack.env, MDGATE_REVIEW="true", MDGATE_REVIEW_MARGIN="1.0",
               MDGATE_REVIEW_POLL_S="1", MDGATE_REVIEW_TIMEOUT_S="600", PYTHONPATH=str(REPO_ROOT),
               PREFECT_HOME=str(tmp_path / "prefect-home"))
    t0 = time.monotonic()
    gate = subprocess.Popen([str(Path(sys.executable).parent / "mdgate"), "gate", name, v, "--server"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        info, _ = wait_for_status(registry, name, v, timeout_s=600)
        assert info.status == Status.PENDING_REVIEW, info.reason
        assert info.reason.startswith("awaiting review: passes within 1 (relative) of a bound")
        assert registry.alias_version(name) is None
        run_id = UUID(info.flow_run)
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while not (state := client.read_flow_run(run_id).state) or not state.is_paused():
                assert time.monotonic() < deadline, f"the gate flow run never paused: {state}"
                time.sleep(0.5)
            assert gate.poll() is None  # waiting for the person
        record_timing("review_gate_to_paused_s", time.monotonic() - t0)
        resume_flow_run(run_id, run_input={"decision": "approve", "reason": "borderline R² accepted for MD",
                                           "reviewer": "alice"})
        out, _ = gate.communicate(timeout=120)
    finally:
        if gate.poll() is None:
            gate.kill()
    assert gate.returncode == 0, out
    assert "Approved" in out
    info = registry.get_version(name, v)
    assert info.status == Status.APPROVED and info.tags[T.DECIDED_BY] == "review/alice"
    assert "borderline R² accepted" in info.reason
    assert registry.alias_version(name) == v
    with get_client(sync_client=True) as client:
        final = client.read_flow_run(run_id).state
    assert final is not None and final.is_completed() and final.name == "Approved"
    events = [(e.kind.value, e.status, e.decided_by, e.alias_to, e.flow_run) for e in registry.history(name)]
    assert events == [("verdict", "PendingReview", "mdgate", "", str(run_id)),
                      ("review", "Approved", "alice", "", str(run_id)),
                      ("alias", "", "alice", v, str(run_id))]


def mdgate_gate(stack: Stack, cwd: Path, name: str, version: str, **env: str) -> subprocess.CompletedProcess:
    """``mdgate gate NAME VERSION --server`` against the session's servers, with more settings."""
    full = dict(os.environ, **stack.env, **env, PYTHONPATH=str(REPO_ROOT), PREFECT_HOME=str(cwd / "prefect-home"))
    return subprocess.run([str(Path(sys.executable).parent / "mdgate"), "gate", name, version, "--server"],
                          env=full, capture_output=True, text=True, timeout=900, cwd=cwd)


class Receiver(http.server.ThreadingHTTPServer):
    """A local HTTP receiver that keeps the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """The URL to post to."""
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.mark.skipif(not (MODELS / "teacher.pt").is_file() or not (MODELS / "student_20x.pt").is_file(),
                    reason="examples/models/teacher.pt and student_20x.pt are not trained here")
def test_candidate_much_worse_than_the_champion_is_rejected(stack: Stack, registry: Registry, small_set,
                                                            tmp_path: Path) -> None:
    # The champion: the demo's teacher (force R² 0.998); the candidate: its 20x student (R² 0.991,
    # drift 17x the teacher's): both pass every absolute bound; the rule allows 0.005 below.
    rule = '{"min_force_r2": {"max_absolute_change": 0.005}}'
    receiver = Receiver()
    env = {"MDGATE_CHAMPION": rule, "MDGATE_NOTIFY_URL": receiver.url}
    name = f"champion-{uuid.uuid4().hex[:6]}"
    meta = {"level_of_theory": "GFN2-xTB"}
    champion = register_potential(registry, MODELS / "teacher.pt", name, meta=meta,
                                  reference=small_set.reference).version
    first = mdgate_gate(stack, tmp_path, name, champion, **env)
    assert first.returncode == 0, first.stdout + first.stderr
    info = registry.get_version(name, champion)
    assert info.status == Status.APPROVED and "no champion to compare with (first approved version)" in info.reason
    candidate = register_potential(registry, MODELS / "student_20x.pt", name, meta=meta,
                                   reference=small_set.reference).version
    second = mdgate_gate(stack, tmp_path, name, candidate, **env)
    assert second.returncode == 1, second.stdout + second.stderr
    info = registry.get_version(name, candidate)
    assert info.status == Status.REJECTED
    assert info.reason.startswith(f"worse than the champion v{champion}: accuracy: min_force_r2 = "), info.reason
    assert info.tags[T.DECIDED_BY] == "champion/min_force_r2"
    assert registry.alias_version(name) == champion
    kinds = [(e.version, e.kind.value, e.status) for e in registry.history(name)]
    assert kinds == [(champion, "verdict", "Approved"), (champion, "alias", ""), (candidate, "verdict", "Rejected")]
    # (f) one notification per final decision, through the Prefect notification block
    assert [n["subject"] for n in receiver.received] == [f"mdgate: {name} v{champion} Approved",
                                                         f"mdgate: {name} v{candidate} Rejected"]
    assert "worse than the champion" in receiver.received[1]["body"]
    receiver.shutdown()
    # re-gating: both were judged under the current criteria, so nothing is due without --all
    from typer.testing import CliRunner

    from flows.cli import app

    res = CliRunner().invoke(app, ["regate", name], catch_exceptions=False)
    assert res.exit_code == 0 and "nothing to re-gate" in res.output
