"""Human review end to end on real MLflow and Prefect servers: a borderline candidate ends
PendingReview, its gate flow run pauses with the review form, a reviewer's input through the
Prefect API resumes it, and the version ends Approved with ``mdgate.decided_by`` the reviewer;
the audit trail holds the automatic outcome, the review and the alias move in order.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
    assert info.status == Status.APPROVED and info.tags[T.DECIDED_BY] == "alice"
    assert info.tags[T.DECISION] == "human" and "borderline R² accepted" in info.reason
    assert registry.alias_version(name) == v
    with get_client(sync_client=True) as client:
        final = client.read_flow_run(run_id).state
    assert final is not None and final.is_completed() and final.name == "Approved"
    events = [(e.kind.value, e.status, e.decided_by, e.alias_to, e.flow_run) for e in registry.history(name)]
    assert events == [("verdict", "PendingReview", "mdgate", "", str(run_id)),
                      ("review", "Approved", "alice", "", str(run_id)),
                      ("alias", "", "alice", v, str(run_id))]
