"""The gate against MLflow and Prefect servers backed by a real PostgreSQL server.

One PostgreSQL server (tests/postgres.py: initdb into a temporary folder, 127.0.0.1, installed
from Debian packages if missing) holds two databases: ``mlflow`` (``mlflow server
--backend-store-uri postgresql://...``, two uvicorn workers, which SQLite could not serve) and
``prefect`` (``PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://...``).

Exactly-once under concurrency there:

- two ``mdgate gate`` processes race on the same version: one gates it, the other is Skipped;
- the process work-pool recipe (``prefect work-pool create --type process``, ``prefect deploy``
  of deployments/prefect.yaml, the tag limit ``mdgate-gpu`` = 2 "GPUs", two ``prefect worker
  start --limit 1``) gates a burst of versions, one of them asked twice at once: each version
  has one claim, one validation run and one flow run with a verdict; every other run is Skipped.

The rows are read back from PostgreSQL itself, so the servers cannot have used SQLite.
These tests take several minutes on the shared 2-core machine: they are ``slow`` (make test-all).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration import REPO_ROOT, ModelFile, record_timing
from tests.postgres import Postgres, PostgresUnavailable, start_postgres

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("psycopg2", reason="the postgres extra is not installed: pip install -e '.[postgres]'")

BIN = Path(sys.executable).parent
VERDICTS = {"Approved", "Rejected"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for this module (skipped, with the reason, if it cannot be had)."""
    from flows.servers import free_port

    try:
        server = start_postgres(free_port())
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    try:
        yield server
    finally:
        server.stop()


@dataclass
class PgStack:
    """MLflow and Prefect servers on PostgreSQL, and the environment that points at them."""

    postgres: Postgres
    tracking_uri: str
    prefect_api_url: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def prefect(self) -> Iterator[Any]:
        """A Prefect client of this stack's server (the session's stack may be the default)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.prefect_api_url}), \
                get_client(sync_client=True) as client:
            yield client

    def run(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        """A command of the venv (``prefect``, ``mdgate``) against this stack."""
        return subprocess.run([str(BIN / args[0]), *args[1:]], env={**os.environ, **self.env, **env},
                              capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def pg_stack(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory, gate_config: Path) -> Iterator[PgStack]:
    """MLflow (2 workers) and Prefect servers whose databases live in ``postgres``."""
    from flows.servers import free_port, start_mlflow_server, start_prefect_server

    home = tmp_path_factory.mktemp("pg_stack")
    mlflow_db = postgres.create_database("mlflow")
    postgres.create_database("prefect")
    t0 = time.monotonic()
    mlflow = start_mlflow_server(home / "mlflow", port=free_port(), backend_store_uri=mlflow_db, workers=2)
    prefect = start_prefect_server(home / "prefect", port=free_port(), ui=False,
                                   database_url=postgres.url("prefect", "postgresql+asyncpg"))
    try:
        mlflow.wait_up(240)
        prefect.wait_up(240)
        record_timing("postgres_stack_startup_s", time.monotonic() - t0)
        env = {
            "MLFLOW_TRACKING_URI": mlflow.url, "PREFECT_API_URL": prefect.url,
            "MDGATE_CONFIG": str(gate_config), "MDGATE_HOME": str(home / "mdgate"),
            "MDGATE_LEASE_S": "600", "MDGATE_CORES": "1", "MDGATE_MD_PARALLEL": "1",
            "MDGATE_GPU_TAG": "mdgate-gpu", "MDGATE_MODELS": "pg-*",
            "MDGATE_ALLOW_PICKLES": "pg-*", "MDGATE_SWEEP_INTERVAL_S": "86400",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONPATH": str(REPO_ROOT),
            "PREFECT_HOME": str(home / "prefect-home"), "CUDA_VISIBLE_DEVICES": "",
        }
        yield PgStack(postgres, mlflow.url, prefect.url, home, env)
    finally:
        prefect.stop()
        mlflow.stop()


def registry_of(stack: PgStack) -> Any:
    from registry import Registry

    return Registry(stack.tracking_uri)


def claims_in_postgres(stack: PgStack, name: str) -> dict[str, int]:
    """Version → claim experiments (``mdgate-claims/<name>/v<version>/<g>``) in the mlflow database."""
    rows = stack.postgres.query("mlflow", "SELECT name FROM experiments WHERE name LIKE "
                                          f"'mdgate-claims/{name}/%'")
    out: dict[str, int] = {}
    for (claim,) in rows:
        version = claim.split("/")[-2].lstrip("v")
        out[version] = out.get(version, 0) + 1
    return out


def validation_runs_in_postgres(stack: PgStack, name: str) -> dict[str, int]:
    """Version → validation runs of the model (runs tagged with its name and a version)."""
    rows = stack.postgres.query("mlflow", f"""
        SELECT v.value, count(*) FROM tags m JOIN tags v ON m.run_uuid = v.run_uuid
        WHERE m.key = 'mdgate.model' AND m.value = '{name}' AND v.key = 'mdgate.version'
        GROUP BY v.value""")
    return {str(version): int(n) for version, n in rows}


def flow_runs_in_postgres(stack: PgStack, name: str) -> dict[str, list[str]]:
    """Version → final state names of its gate flow runs, from the prefect database."""
    rows = stack.postgres.query("prefect", f"SELECT name, state_name FROM flow_run WHERE name LIKE 'gate/{name}/v%'")
    out: dict[str, list[str]] = {}
    for run_name, state in rows:
        out.setdefault(run_name.rsplit("/v", 1)[1], []).append(state)
    return {v: sorted(states) for v, states in out.items()}


def assert_gated_once(stack: PgStack, name: str, expected: dict[str, str], runs: dict[str, int]) -> None:
    """Each version: its expected verdict, claim 1, one validation run, one flow run with a verdict
    and every other one (at least ``runs[v] - 1``; the scheduled sweep may add some) Skipped, in
    PostgreSQL itself.
    """
    registry = registry_of(stack)
    for version, verdict in expected.items():
        info = registry.get_version(name, version)
        assert info.status is not None and info.status.value == verdict, (version, info.reason)
        assert info.claim == 1 and info.validation_run, (version, info.tags)
    assert claims_in_postgres(stack, name) == dict.fromkeys(expected, 1)
    assert validation_runs_in_postgres(stack, name) == dict.fromkeys(expected, 1)
    flow_runs = flow_runs_in_postgres(stack, name)
    for version, verdict in expected.items():
        states = flow_runs[version]
        assert states.count(verdict) == 1 and len(states) >= runs[version], (version, flow_runs)
        assert set(states) == ({verdict, "Skipped"} if len(states) > 1 else {verdict}), (version, flow_runs)


def test_two_gate_processes_race_on_one_version(pg_stack: PgStack, good_model: ModelFile) -> None:
    from registry.register import register_potential

    name = f"pg-race-{uuid.uuid4().hex[:6]}"
    version = register_potential(registry_of(pg_stack), good_model.path, name, meta=good_model.meta).version
    t0 = time.monotonic()
    env = {**os.environ, **pg_stack.env}
    procs = [subprocess.Popen([str(BIN / "mdgate"), "gate", name, version], env=env, cwd=pg_stack.home,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    record_timing("postgres_race_two_gates_s", time.monotonic() - t0)
    firsts = sorted(out.strip().splitlines()[-1].split(":")[0] if out.strip() else "" for out in outs)
    assert firsts == ["Approved", "Skipped"], outs
    assert sorted(p.returncode for p in procs) in ([0, 0], [0, 2]), outs  # the loser: 2 while still Running
    assert_gated_once(pg_stack, name, {version: "Approved"}, {version: 2})


def test_process_pool_workers_gate_a_burst_exactly_once(pg_stack: PgStack, good_model: ModelFile,
                                                         bad_model: ModelFile) -> None:
    from registry.register import register_potential

    # The process work-pool recipe of deployments/README.md, against this Prefect server.
    r = pg_stack.run("prefect", "work-pool", "create", "mdgate", "--type", "process")
    assert r.returncode == 0, r.stdout + r.stderr
    r = pg_stack.run("prefect", "concurrency-limit", "create", "mdgate-gpu", "2")  # 2 "GPUs"
    assert r.returncode == 0, r.stdout + r.stderr
    r = pg_stack.run("prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml",
                     MDGATE_REPO=str(REPO_ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    with pg_stack.prefect() as client:
        pool = client.read_work_pool("mdgate")
        deployment = client.read_deployment_by_name("gate-model-version/mdgate")
        assert pool.type == "process" and deployment.work_pool_name == "mdgate"
        assert client.read_concurrency_limit_by_tag("mdgate-gpu").concurrency_limit == 2

    registry = registry_of(pg_stack)
    name = f"pg-burst-{uuid.uuid4().hex[:6]}"
    good = [register_potential(registry, good_model.path, name, meta=good_model.meta).version for _ in range(2)]
    bad = register_potential(registry, bad_model.path, name, meta=bad_model.meta).version
    expected = {good[0]: "Approved", good[1]: "Approved", bad: "Rejected"}
    asked = {good[0]: 2, good[1]: 1, bad: 1}  # the first version is asked twice at once
    workers = []
    t0 = time.monotonic()
    try:
        for i in range(2):
            log = (pg_stack.home / f"worker{i}.log").open("wb")
            env = {**os.environ, **pg_stack.env, "MDGATE_HOME": str(pg_stack.home / f"worker{i}"),
                   "PREFECT_HOME": str(pg_stack.home / f"worker{i}-prefect")}
            workers.append(subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "mdgate", "--type", "process", "--limit", "1",
                 "--name", f"gpu{i}"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=pg_stack.home,
                start_new_session=True))
        with pg_stack.prefect() as client:
            ids = [client.create_flow_run_from_deployment(deployment.id, parameters={"name": name, "version": v}).id
                   for v, n in asked.items() for _ in range(n)]
            deadline = time.monotonic() + 900
            while True:
                runs = [client.read_flow_run(i) for i in ids]
                if all(r.state is not None and r.state.is_final() for r in runs):
                    break
                assert time.monotonic() < deadline, [(r.name, r.state_name) for r in runs]
                assert all(w.poll() is None for w in workers), "a worker died"
                time.sleep(2)
        record_timing("postgres_burst_4_runs_2_workers_s", time.monotonic() - t0)
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGINT)
        for w in workers:
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
    logs = [(pg_stack.home / f"worker{i}.log").read_text(errors="replace") for i in range(2)]
    assert all(r.state_name in VERDICTS | {"Skipped"} for r in runs), ([(r.name, r.state_name) for r in runs],
                                                                       logs[0][-3000:], logs[1][-3000:])
    assert_gated_once(pg_stack, name, expected, asked)
    # both workers took runs of the burst: two "GPUs" in use
    for log in logs:
        assert any(str(i) in log for i in ids), log[-3000:]
    record_orchestration_load(pg_stack, name, len(expected))


def record_orchestration_load(stack: PgStack, name: str, n_gates: int) -> None:
    """Rows one gate writes to the Prefect database (deployments/README.md, throughput model)."""
    gated = f"f.name LIKE 'gate/{name}/v%' AND f.state_name IN ('Approved', 'Rejected')"
    queries = {
        "task_runs": f"SELECT count(*) FROM task_run t JOIN flow_run f ON t.flow_run_id = f.id WHERE {gated}",
        "task_run_states": "SELECT count(*) FROM task_run_state s JOIN task_run t ON s.task_run_id = t.id "
                           f"JOIN flow_run f ON t.flow_run_id = f.id WHERE {gated}",
        "flow_run_states": f"SELECT count(*) FROM flow_run_state s JOIN flow_run f ON s.flow_run_id = f.id "
                           f"WHERE {gated}",
        "logs": f"SELECT count(*) FROM log l JOIN flow_run f ON l.flow_run_id = f.id WHERE {gated}",
        "artifacts": f"SELECT count(*) FROM artifact a JOIN flow_run f ON a.flow_run_id = f.id WHERE {gated}",
    }
    for what, sql in queries.items():
        [(count,)] = stack.postgres.query("prefect", sql)
        record_timing(f"postgres_prefect_{what}_per_gate", count / n_gates)
