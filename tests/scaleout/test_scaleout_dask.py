"""The gate's per-molecule MD tasks on a real Dask cluster (``MDGATE_TASK_RUNNER=dask``).

A ``distributed.LocalCluster`` of several worker processes; the same model registered twice;
one version gated with the default local task runner, the other with the Dask one, each by
``mdgate gate`` in its own process against the session's MLflow and Prefect servers. The MD
tasks must have run in the cluster's worker processes (their PIDs, logged by each task run),
several of them, and the verdict and every per-molecule figure must equal the local run's.

MD is short here (``MDGATE_TEST_DASK_STEPS``, default 200 steps of 8 molecules): the wall times
go to out/integration_timings.json; the speedup quoted in deployments/README.md was measured
with longer runs of this test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from ase.io import write

from tests.integration import REPO_ROOT, ModelFile, Stack, flow_runs_named, record_timing
from tests.models import QUICK_STAGES

pytestmark = pytest.mark.integration
NO_DASK = "the dask extra is not installed: pip install -e '.[dask]'"
distributed = pytest.importorskip("distributed", reason=NO_DASK)
pytest.importorskip("prefect_dask", reason=NO_DASK)

N_MOLECULES = 8
N_WORKERS = 4
STEPS = int(os.environ.get("MDGATE_TEST_DASK_STEPS", "200"))
FRAMES = 5
PID_LINE = re.compile(r"^MD of (\S+) \(.*\) in process (\d+) on ")


@pytest.fixture(scope="module")
def eight_molecules(tmp_path_factory: pytest.TempPathFactory, packaged_molecules: list[Any],
                    packaged_reference: Any) -> Path:
    """A gate config on 8 packaged molecules with 5 reference frames each."""
    folder = tmp_path_factory.mktemp("dask_set")
    mols = packaged_molecules[:N_MOLECULES]
    names = [m.name for m in mols]
    frames = []
    for name in names:
        frames += [f for f, n in zip(packaged_reference.frames, packaged_reference.names, strict=True)
                   if n == name][:FRAMES]
    write(folder / "molecules.extxyz", [m.atoms for m in mols])
    write(folder / "reference.extxyz", frames)
    config = folder / "gate.yaml"
    config.write_text(yaml.safe_dump({
        **QUICK_STAGES,
        "md": {"n_steps": STEPS, "n_replicas": 1, "record_every": 10, "device": "cpu"},
        # A linear fit over a fraction of a ps measures fluctuations, not drift: informational here.
        "criteria": {"drift_slope_meV_per_atom_per_ps": {"bound": 0.5, "required": False}},
        "molecules": str(folder / "molecules.extxyz"), "reference": str(folder / "reference.extxyz"),
    }))
    return config


@pytest.fixture(scope="module")
def cluster(stack: Stack) -> Any:
    """A LocalCluster of worker processes (one thread each), warmed: every worker has imported
    the gate's modules, as the workers of a long-lived cluster have.
    """
    env = {**stack.env, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    with distributed.LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None, env=env) as c, \
            distributed.Client(c) as client:
        t0 = time.monotonic()
        client.run(lambda: __import__("flows.gate"))
        record_timing("dask_worker_warmup_s", time.monotonic() - t0)
        yield c, client


def gate(stack: Stack, config: Path, name: str, version: str, tag: str, **env: str) -> tuple[int, float, str]:
    """``mdgate gate NAME VERSION`` in a subprocess; its exit code, wall seconds and output."""
    full = {**os.environ, **stack.env, "MDGATE_CONFIG": str(config), "MDGATE_GPU_TAG": tag,
            "MDGATE_MD_PARALLEL": "2", "MDGATE_CORES": "2", "PYTHONPATH": str(REPO_ROOT), "MDGATE_ALLOW_PICKLES": "*",
            "PREFECT_HOME": str(stack.home / f"prefect-home-{version}"), **env}
    t0 = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "mdgate"), "gate", name, version], env=full,
                          capture_output=True, text=True, timeout=900, cwd=stack.home)
    return proc.returncode, time.monotonic() - t0, proc.stdout + proc.stderr


def md_task_pids(flow_run: Any, timeout_s: float = 60.0) -> dict[str, int]:
    """Molecule → PID of the process its MD task ran in (from the task runs' logs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterTaskRunId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        md = {t.id: t for t in tasks if t.name.startswith("md-")}
        assert len(md) == N_MOLECULES and all(t.state.is_completed() for t in md.values()), \
            [(t.name, t.state.name) for t in md.values()]
        deadline = time.monotonic() + timeout_s  # logs reach the API in batches
        while True:
            logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=list(md))))
            pids = {m.group(1): int(m.group(2)) for m in (PID_LINE.match(log.message) for log in logs) if m}
            if len(pids) == N_MOLECULES or time.monotonic() > deadline:
                return pids
            time.sleep(1)


def results_json(registry: Any, info: Any, folder: Path) -> dict[str, Any]:
    """The results.json of a version's validation run."""
    path = registry.client.download_artifacts(info.validation_run, "results.json", str(folder))
    return json.loads(Path(path).read_text())


def comparable(results: dict[str, Any]) -> list[Any]:
    """Per-molecule verdicts, checks and figures (everything but timing)."""
    return [(m["name"], m["passed"], m["summary"],
             [(c["name"], c["value"], c["passed"]) for c in m["checks"]],
             [r["steps_done"] for r in m["replicas"]]) for m in results["molecules"]]


def test_md_tasks_on_dask_workers_give_the_local_verdict(stack: Stack, registry: Any, good_model: ModelFile,
                                                         eight_molecules: Path, cluster: Any,
                                                         tmp_path: Path) -> None:
    from registry import Status
    from registry.register import register_potential

    c, client = cluster
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == N_WORKERS
    name = f"dask-painn-{uuid.uuid4().hex[:6]}"
    tag = f"mdgate-gpu-{uuid.uuid4().hex[:6]}"  # no concurrency limit on it: the cluster bounds MD
    local_v = register_potential(registry, good_model.path, name, meta=good_model.meta).version
    dask_v = register_potential(registry, good_model.path, name, meta=good_model.meta).version

    # one MD task per molecule in both gates: the same batches, the same numbers
    rc_local, wall_local, out_local = gate(stack, eight_molecules, name, local_v, tag, MDGATE_TASK_RUNNER="local",
                                           MDGATE_MD_BATCH="molecule")
    rc_dask, wall_dask, out_dask = gate(stack, eight_molecules, name, dask_v, tag, MDGATE_TASK_RUNNER="dask",
                                        MDGATE_DASK_ADDRESS=c.scheduler_address)
    assert rc_local in (0, 1), out_local
    assert rc_dask == rc_local, out_dask

    local, dask_ = registry.get_version(name, local_v), registry.get_version(name, dask_v)
    assert local.status in (Status.APPROVED, Status.REJECTED) and dask_.status == local.status, \
        (local.reason, dask_.reason)
    r_local = results_json(registry, local, tmp_path / "local")
    r_dask = results_json(registry, dask_, tmp_path / "dask")
    assert r_dask["verdict"] == r_local["verdict"] and r_dask["failed_checks"] == r_local["failed_checks"]
    assert len(r_local["molecules"]) == N_MOLECULES
    assert comparable(r_dask) == comparable(r_local)  # same seeds, one thread each: same numbers
    assert r_dask["accuracy"]["force_r2"] == r_local["accuracy"]["force_r2"]

    [run_local] = flow_runs_named(f"gate/{name}/v{local_v}")
    [run_dask] = flow_runs_named(f"gate/{name}/v{dask_v}")
    pids_local, pids_dask = md_task_pids(run_local), md_task_pids(run_dask)
    assert len(pids_local) == len(pids_dask) == N_MOLECULES
    assert len(set(pids_local.values())) == 1 and not set(pids_local.values()) & worker_pids
    assert set(pids_dask.values()) <= worker_pids, (pids_dask, worker_pids)
    assert len(set(pids_dask.values())) >= 2, pids_dask  # the molecules ran in several processes

    md_local, md_dask = r_local["timing"]["md_s"], r_dask["timing"]["md_s"]
    flow_local = (run_local.end_time - run_local.start_time).total_seconds()
    flow_dask = (run_dask.end_time - run_dask.start_time).total_seconds()
    record_timing(f"dask_{N_MOLECULES}mol_{STEPS}steps_local_md_s", md_local)
    record_timing(f"dask_{N_MOLECULES}mol_{STEPS}steps_dask_md_s", md_dask)
    record_timing(f"dask_{N_MOLECULES}mol_{STEPS}steps_local_flow_s", flow_local)
    record_timing(f"dask_{N_MOLECULES}mol_{STEPS}steps_dask_flow_s", flow_dask)
    record_timing(f"dask_{N_MOLECULES}mol_{STEPS}steps_md_speedup", md_local / md_dask)
    print(f"\n{N_MOLECULES} molecules x {STEPS} steps: MD local {md_local:.1f} s, Dask ({N_WORKERS} workers) "
          f"{md_dask:.1f} s, speedup {md_local / md_dask:.2f}; flow run local {flow_local:.1f} s, "
          f"Dask {flow_dask:.1f} s; mdgate gate wall local {wall_local:.1f} s, Dask {wall_dask:.1f} s; "
          f"Dask worker PIDs used {sorted(set(pids_dask.values()))}")


def _md_in_a_thread_of_its_own(reporter: Any, flag: Any, n_steps: int) -> tuple[int | None, int]:
    """On a worker: an MD-like loop in a thread started like the engine's deadline thread (a
    copy of the task's context), publishing progress and stopping when the flag is set.
    """
    import contextvars
    import threading

    out: dict[str, int | None] = {"stopped_at": None}

    def body() -> None:
        for step in range(n_steps):
            reporter("ethanol", step, n_steps, True)
            if flag.is_set():
                out["stopped_at"] = step
                return
            time.sleep(0.05)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(body,))
    thread.start()
    thread.join()
    return out["stopped_at"], os.getpid()


def test_progress_and_abort_cross_processes(cluster: Any) -> None:
    import cloudpickle

    from flows.dask_tasks import PROGRESS_KEY, AbortFlag, ProgressReporter

    _, client = cluster
    key, flag = f"mdgate-md-test-{uuid.uuid4().hex[:6]}", AbortFlag(f"mdgate-abort-{uuid.uuid4().hex[:6]}", 0.1)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    try:
        future = client.submit(_md_in_a_thread_of_its_own, ProgressReporter(key, every_s=0.0), flag, 2000,
                               key=key, pure=False)
        deadline = time.monotonic() + 60
        while not (published := client.get_metadata([key, PROGRESS_KEY], default=None)) or published[0] < 5:
            assert time.monotonic() < deadline and not future.done(), (published, future)
            time.sleep(0.1)
        assert list(published[1:]) == [2000, True]  # published from a thread that is not Dask's task thread
        distributed.Event(flag.name, client=client).set()
        stopped_at, pid = future.result(timeout=30)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert stopped_at is not None and stopped_at < 2000 and pid in set(client.run(os.getpid).values())
    del future  # the scheduler forgets the task, and its progress with it
    deadline = time.monotonic() + 30
    while client.get_metadata([key], default=None) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_unreachable_cluster_leaves_the_version_running(stack: Stack, registry: Any, good_model: ModelFile,
                                                       eight_molecules: Path) -> None:
    from flows.servers import free_port
    from registry import Status
    from registry.register import register_potential

    name = f"dask-down-{uuid.uuid4().hex[:6]}"
    version = register_potential(registry, good_model.path, name, meta=good_model.meta).version
    rc, _, out = gate(stack, eight_molecules, name, version, "mdgate-gpu-down", MDGATE_TASK_RUNNER="dask",
                      MDGATE_DASK_ADDRESS=f"tcp://127.0.0.1:{free_port()}",
                      DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s")
    assert rc == 2, out
    info = registry.get_version(name, version)
    # an outage, not a verdict: Running until the lease expires, then the sweep gates it again
    assert info.status == Status.RUNNING and info.validation_run is None, info.reason
    assert "Dask cluster tcp://127.0.0.1" in out, out


def test_task_runner_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.dask_tasks import task_runner
    from flows.settings import load_settings

    assert load_settings().task_runner == "processes"  # the default: worker processes, no Dask
    monkeypatch.setenv("MDGATE_TASK_RUNNER", "dask")
    monkeypatch.setenv("MDGATE_DASK_CLUSTER_KWARGS", '{"n_workers": 3, "processes": true}')
    monkeypatch.setenv("MDGATE_DASK_RESOURCES", '{"GPU": 1}')
    settings = load_settings()
    assert settings.dask_resources == {"GPU": 1.0}
    runner = task_runner(settings)  # a cluster each gate starts
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_class == "distributed.LocalCluster" and runner.cluster_kwargs == {"n_workers": 3,
                                                                                            "processes": True}
    monkeypatch.setenv("MDGATE_DASK_ADDRESS", "tcp://10.0.0.5:8786")  # an existing cluster
    assert task_runner(load_settings()).address == "tcp://10.0.0.5:8786"
