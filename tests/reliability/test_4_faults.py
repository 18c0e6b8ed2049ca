"""Faults: servers stopped and restarted, the worker killed, duplicate triggers, full disks, a
crash between the report and the status. In every case each version ends with the right final
status, is gated exactly once where that is the contract, and is never Approved wrongly.

The tests run in order: the later ones stop and restart the worker and the Prefect server.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.settings import SWEEP_FLOW
from registry import types as T
from tests.integration import flow_runs_named, wait_for_status, wait_for_statuses
from tests.reliability.conftest import (
    META_TAGS,
    Models,
    RelStack,
    Sources,
    Tally,
    Worker,
    md_running,
    paused_webhook,
    task_runs,
    unique,
    validation_runs,
    verdict_runs,
    wait_until,
)
from tests.reliability.test_3_security import event, headers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def gated_once(registry: Any, name: str, version: str, claim: int = 1) -> list[str]:
    """What is wrong with a version that should be final, gated once under claim ``claim``."""
    info = registry.get_version(name, version)
    out = []
    if info.status is None or not info.status.is_final:
        out.append(f"status {info.status}")
    if info.claim != claim:
        out.append(f"claim {info.claim} (expected {claim})")
    runs = verdict_runs(name, version, wait_s=60)
    if len(runs) != 1:
        out.append(f"{len(runs)} flow runs reached a verdict")
    published = [r for r in validation_runs(registry, name, version)
                 if r.data.tags.get("mdgate.claim") == str(info.claim)]
    if len(published) != 1:
        out.append(f"{len(published)} validation runs of claim {info.claim}")
    if info.status is not None and info.status.value in ("Approved", "Rejected") and not info.report:
        out.append("a verdict without a report")
    return out


def run_sweep_deployment() -> Any:
    from prefect.deployments import run_deployment

    return run_deployment(f"{SWEEP_FLOW}/mdgate", timeout=0, as_subflow=False)


# ------------------------------------------------------------------------------ 1. MLflow restart


def test_mlflow_restarted_during_a_gate(worker: Worker, rel_stack: RelStack, rel_registry: Any,
                                        sources: Sources, models: Models, tally: Tally) -> None:
    tally.faults["mlflow-restart-during-gate"] = False
    name = unique("f-mlflow")
    version = sources.register(name, "slow", {"model.pt": models.slow}, META_TAGS)
    tally.expect(name, version, "Approved")
    run = wait_until("MD of the gate", lambda: md_running(name, version), 240, 0.3)
    rel_stack.stop_mlflow()
    try:
        def publish_failed() -> bool:
            pub = [t for t in task_runs(run.id) if t.name.startswith("publish")]
            return bool(pub) and (pub[0].run_count > 1 or pub[0].state.name in ("AwaitingRetry", "Retrying"))

        wait_until("the publish task to fail on the stopped server", publish_failed, 240)
    finally:
        restart_s = rel_stack.start_mlflow()
    tally.notes.append(f"MLflow restart took {restart_s:.0f} s")
    info, _ = wait_for_status(rel_registry, name, version, timeout_s=300)
    assert info.status.value == "Approved", (info.reason, worker.tail())
    # the publish task failed on the stopped server, was retried, and completed (the version
    # is marked a moment before the task's own final state is recorded)
    publish = wait_until("the publish task to complete", lambda: [
        t for t in task_runs(run.id) if t.name.startswith("publish") and t.state.is_completed()], 60, 1)
    assert publish[0].run_count >= 2
    assert not gated_once(rel_registry, name, version), gated_once(rel_registry, name, version)
    stored = {a.path for a in rel_registry.client.list_artifacts(info.validation_run)}
    assert {"report.md", "results.json"} <= stored
    tally.faults["mlflow-restart-during-gate"] = True


# ------------------------------------------------------------------------------ 2, 3. duplicates


def test_same_webhook_delivered_several_times_gates_once(worker: Worker, rel_stack: RelStack,
                                                         rel_registry: Any, sources: Sources, models: Models,
                                                         tally: Tally) -> None:
    tally.faults["duplicate-webhooks"] = False
    name = unique("f-dup")
    with paused_webhook(rel_registry):
        version = sources.register(name, "bad", {"model.pt": models.bad}, META_TAGS)
    tally.expect(name, version, "Rejected")
    body = event(name, version)
    same = headers(body, "dup-1")
    answers: list[httpx.Response] = []

    def deliver(h: dict[str, str]) -> None:
        answers.append(httpx.post(rel_stack.webhook_url, content=body, headers=h, timeout=60))

    # MLflow's retries of one delivery (same id, at once), and two more webhooks for the event
    threads = [threading.Thread(target=deliver, args=(same,)) for _ in range(4)]
    threads += [threading.Thread(target=deliver, args=(headers(body, f"dup-{i}"),)) for i in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    accepted = [r for r in answers if r.status_code == 202]
    assert len(answers) == 6 and all(r.status_code in (202, 403) for r in answers), [r.text for r in answers]
    assert len({r.json()["flow_run"] for r in accepted}) == 1
    same_id = [r for r in answers if r.request.headers["X-MLflow-Delivery-Id"] == "dup-1"]
    assert sum(r.status_code == 202 for r in same_id) == 1, [r.text for r in same_id]
    wait_for_status(rel_registry, name, version, timeout_s=300)
    time.sleep(2)
    assert len(flow_runs_named(f"gate/{name}/v{version}")) == 1
    assert not gated_once(rel_registry, name, version), gated_once(rel_registry, name, version)
    tally.faults["duplicate-webhooks"] = True


def test_two_sweeps_racing_gate_each_version_once(worker: Worker, rel_registry: Any, sources: Sources,
                                                  models: Models, tally: Tally) -> None:
    tally.faults["racing-sweeps"] = False
    from prefect.client.orchestration import get_client

    name = unique("f-race")
    with paused_webhook(rel_registry):
        versions = {sources.register(name, kind, {"model.pt": getattr(models, kind)}, META_TAGS): kind
                    for kind in ("good", "bad", "good")}
    for v, kind in versions.items():
        tally.expect(name, v, "Approved" if kind == "good" else "Rejected")
    sweeps = [run_sweep_deployment(), run_sweep_deployment()]
    done = wait_for_statuses(rel_registry, name, dict.fromkeys(versions, time.monotonic()), timeout_s=400)
    for v, kind in versions.items():
        assert done[v][0].status.value == ("Approved" if kind == "good" else "Rejected"), done[v][0].reason
        assert not gated_once(rel_registry, name, v), (v, gated_once(rel_registry, name, v))
        assert len(flow_runs_named(f"gate/{name}/v{v}")) == 1
    with get_client(sync_client=True) as client:
        states = [wait_until("sweep end", lambda s=s: (lambda r: r.state if r.state.is_final() else None)(
            client.read_flow_run(s.id)), 120) for s in sweeps]
    assert all(s.is_completed() for s in states), states
    tally.faults["racing-sweeps"] = True


# ------------------------------------------------------------------------------ 4. disk full


@contextlib.contextmanager
def full_disk(path: Path) -> Iterator[str]:
    """``path`` (a folder) is on a full filesystem meanwhile: a 64 KiB tmpfs filled up, else (no
    permission to mount) a file where the folder should be, so nothing can be written in it.
    """
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    moved = path.with_name(path.name + ".moved")
    try:
        if mounted:
            with contextlib.suppress(OSError), (path / "filler").open("wb") as f:
                for _ in range(1000):
                    f.write(b"\0" * 4096)
                    f.flush()
            how = "tmpfs full"
        else:
            path.rename(moved)
            path.write_text("not a folder")
            how = "unwritable path"
        yield how
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
        else:
            path.unlink(missing_ok=True)
            moved.rename(path)


def test_disk_full_ends_error_never_approved(worker: Worker, rel_stack: RelStack, rel_registry: Any,
                                            sources: Sources, models: Models, tally: Tally) -> None:
    tally.faults["disk-full"] = False
    exp = rel_registry.client.get_experiment_by_name("mdgate")
    assert exp is not None, "earlier gates create the validation-run experiment"
    # (a) MLflow's artifact store (the validation runs' folder) is full: the report cannot be stored
    name = unique("f-full")
    with full_disk(rel_stack.artifacts / exp.experiment_id) as how:
        store = sources.register(name, "good", {"model.pt": models.good}, META_TAGS)
        tally.expect(name, store, "Error")
        info, _ = wait_for_status(rel_registry, name, store, timeout_s=400)
    assert info.status.value == "Error", (how, info.status, info.reason, worker.tail())
    assert "artifact store" in info.reason and "\n" not in info.reason, info.reason
    # (b) the worker's own disk is full: the model cannot be downloaded, no report can be written
    with full_disk(rel_stack.home / "worker" / "work") as how:
        local = sources.register(name, "good", None, META_TAGS)
        tally.expect(name, local, "Error")
        info, _ = wait_for_status(rel_registry, name, local, timeout_s=400)
    assert info.status.value == "Error", (how, info.status, info.reason, worker.tail())
    assert "gate host" in info.reason and "\n" not in info.reason, info.reason
    for v in (store, local):
        assert rel_registry.get_version(name, v).claim == 1 and len(verdict_runs(name, v, wait_s=60)) == 1
    # space is back: the next version is gated normally
    after = sources.register(name, "good", None, META_TAGS)
    tally.expect(name, after, "Approved")
    info, _ = wait_for_status(rel_registry, name, after, timeout_s=300)
    assert info.status.value == "Approved", info.reason
    assert rel_registry.alias_version(name) == after
    tally.faults["disk-full"] = True


# ------------------------------------------------------------------------------ 5. crash


class SimulatedCrash(BaseException):
    """The gate process dies (not an error a task could handle)."""


def test_crash_between_artifacts_and_status_leaves_the_version_regateable(
        worker: Worker, rel_registry: Any, sources: Sources, models: Models, tally: Tally,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tally.faults["crash-between-artifacts-and-status"] = False
    from flows.gate import gate_model_version
    from registry.client import Registry

    name = unique("f-crash")
    with paused_webhook(rel_registry):
        version = sources.register(name, "good", {"model.pt": models.good}, META_TAGS)
    tally.expect(name, version, "Approved")
    real = Registry.set_tags

    def crash_at_status(self: Registry, n: str, v: str, tags: dict[str, str]) -> None:
        if tags.get(T.STATUS) in ("Approved", "Rejected", "Error"):
            raise SimulatedCrash("the gate died after storing the report, before the status")
        real(self, n, v, tags)

    # the gate runs in this process with a short lease, and dies where the status would be written
    monkeypatch.setenv("MDGATE_LEASE_S", "15")
    monkeypatch.setattr(Registry, "set_tags", crash_at_status)
    with pytest.raises(SimulatedCrash):
        gate_model_version(name=name, version=version)
    monkeypatch.setattr(Registry, "set_tags", real)
    info = rel_registry.get_version(name, version)
    assert info.status.value == "Running", info.status  # never marked without its status write
    [orphan] = validation_runs(rel_registry, name, version)
    assert {"report.md", "results.json"} <= {a.path for a in rel_registry.client.list_artifacts(orphan.info.run_id)}
    # re-gateable: the sweep finds it once its lease is over, and gates it again, once
    wait_until("the lease to run out", lambda: any(
        v.ref == f"{name}/{version}" for v in rel_registry.versions_to_gate(lease_s=300)), 60, 1)
    run_sweep_deployment()
    info, _ = wait_for_status(rel_registry, name, version, timeout_s=300)
    assert info.status.value == "Approved", info.reason
    assert not gated_once(rel_registry, name, version, claim=2), gated_once(rel_registry, name, version, claim=2)
    assert info.validation_run != orphan.info.run_id and info.report
    tally.faults["crash-between-artifacts-and-status"] = True


# ------------------------------------------------------------------------------ 6, 7. worker, Prefect


def test_worker_killed_mid_gate_then_prefect_restarted_between_trigger_and_run(
        worker: Worker, rel_stack: RelStack, rel_registry: Any, sources: Sources, models: Models,
        tally: Tally) -> None:
    tally.faults["worker-killed-mid-gate"] = False
    tally.faults["prefect-restart-between-trigger-and-run"] = False
    from flows.sweep import sweep_registry

    lease_s = 20
    worker.stop()
    worker.start(MDGATE_LEASE_S=str(lease_s))
    name = unique("f-kill")
    killed = sources.register(name, "slow", {"model.pt": models.slow}, META_TAGS)
    tally.expect(name, killed, "Approved")
    first = wait_until("MD of the gate", lambda: md_running(name, killed), 240, 0.3)
    pids = worker.kill()
    assert rel_registry.get_version(name, killed).status.value == "Running"
    # registered while no worker listens: its webhook is lost
    missed = sources.register(name, "bad", {"model.pt": models.bad}, META_TAGS)
    tally.expect(name, missed, "Rejected")
    wait_until("the killed gate's lease to run out", lambda: {killed, missed} <= {
        v.version for v in rel_registry.versions_to_gate(lease_s) if v.name == name}, 3 * lease_s, 1)
    # the trigger: a sweep creates both gate runs (and claims the versions for them) ...
    started = sweep_registry()
    assert {f"{name}/{killed}", f"{name}/{missed}"} <= set(started)
    runs = {v: rel_registry.get_version(name, v).flow_run for v in (killed, missed)}
    assert all(runs.values()) and runs[killed] != str(first.id)
    # ... then the Prefect server restarts before any worker runs them
    rel_stack.stop_prefect()
    restart_s = rel_stack.start_prefect()
    tally.notes.append(f"Prefect restart took {restart_s:.0f} s")
    worker.start()
    assert all(p not in worker_tree(worker) for p in pids)
    done = wait_for_statuses(rel_registry, name, dict.fromkeys((killed, missed), time.monotonic()), timeout_s=400)
    assert done[killed][0].status.value == "Approved", done[killed][0].reason
    assert done[missed][0].status.value == "Rejected", done[missed][0].reason
    problems = gated_once(rel_registry, name, killed, claim=2)
    assert not problems and len(validation_runs(rel_registry, name, killed)) == 1, problems
    assert done[killed][0].flow_run == runs[killed]
    tally.faults["worker-killed-mid-gate"] = True
    assert not gated_once(rel_registry, name, missed, claim=1), gated_once(rel_registry, name, missed)
    assert done[missed][0].flow_run == runs[missed]
    tally.faults["prefect-restart-between-trigger-and-run"] = True


def worker_tree(worker: Worker) -> list[int]:
    from tests.reliability.conftest import process_tree

    return process_tree(worker.pid)
