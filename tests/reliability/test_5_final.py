"""After everything: nothing lost (every version the suite registered ends final, and a sweep
finds nothing left to gate), nothing wrongly approved, and the webhook secret appears nowhere:
not in any log, database, artifact or work file the suite's servers and worker wrote, nor in
any tag, description, param or run tag in MLflow.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.reliability.conftest import PREFIX, SECRET, RelStack, Tally, Worker, wait_until
from tests.reliability.test_4_faults import run_sweep_deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_nothing_lost_nothing_wrongly_approved(worker: Worker, rel_registry: Any, tally: Tally) -> None:
    run_sweep_deployment()  # anything left behind is gated now
    deadline = time.monotonic() + 400
    while True:
        infos = {key: rel_registry.get_version(*key) for key in tally.expected}
        pending = [k for k, v in infos.items() if v.status is None or not v.status.is_final]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    wrong = [(k, v.status.value, tally.expected[k]) for k, v in infos.items()
             if v.status is not None and v.status.value == "Approved" and tally.expected[k] != "Approved"]
    mismatched = [(k, v.status.value if v.status else None, tally.expected[k]) for k, v in infos.items()
                  if k not in pending and tally.expected[k] in ("Approved", "Rejected", "Error")
                  and v.status.value != tally.expected[k]]
    tally.lost = len(pending)
    tally.wrongly_approved = len(wrong)
    due = [v.ref for v in rel_registry.versions_to_gate(lease_s=300) if v.name.startswith(PREFIX)]
    assert not pending, f"not final: {pending}\n{worker.tail()}"
    assert not wrong, wrong
    assert not mismatched, mismatched
    assert not due, due


def test_the_secret_appears_nowhere(worker: Worker, rel_stack: RelStack, rel_registry: Any) -> None:
    needle = SECRET.encode()
    # the worker did receive it (else this test proves nothing): signed deliveries were accepted
    assert "webhook: gate" in worker.log.read_text(errors="replace")
    hits = []
    scanned = 0
    for path in rel_stack.home.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        if needle in data:
            hits.append(str(path.relative_to(rel_stack.home)))
    assert scanned > 50 and not hits, hits
    client = rel_registry.client
    for model in client.search_registered_models(max_results=1000):
        assert SECRET not in str(model.tags) and SECRET not in (model.description or "")
    for v in rel_registry.search_versions():
        assert SECRET not in str(v.tags) and SECRET not in v.description and SECRET not in v.reason, v.ref
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            assert SECRET not in str(run.data.params) and SECRET not in str(run.data.tags), run.info.run_id
    wait_until("the worker to be alive", lambda: worker.process.poll() is None, 5)
