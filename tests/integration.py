"""Fixtures for the integration tests of the gate (loaded by tests/conftest.py as a plugin).

Real servers, no mocks: an ``mlflow server`` (SQLite, local proxied artifacts) and a
``prefect server start`` (SQLite), each on a free port of 127.0.0.1 in its own process group,
and ``mdgate serve`` (gate + sweep deployments, webhook receiver) as a subprocess, all
session-scoped. MD is tiny: two small molecules, 60 steps, one replica.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tests.models import GOOD_MODEL, QUICK_STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]
PAINN_SMALL = GOOD_MODEL
WEBHOOK_SECRET = "integration-test-secret"
#: Registered model names the served gate acts on; other tests use other names.
GATED_PREFIX = "gate-"
TIMINGS = REPO_ROOT / "out" / "integration_timings.json"
#: The gate config of the integration tests: tiny MD, force R² >= 0.9 on the small reference.
MD = {"n_steps": 60, "n_replicas": 1, "record_every": 10, "device": "cpu"}


@dataclass
class Stack:
    """The servers of the session and the environment that points at them."""

    tracking_uri: str
    prefect_api_url: str
    home: Path
    config: Path
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def gate_config(tmp_path_factory: pytest.TempPathFactory, small_set: Any) -> Path:
    """The gate config YAML of the integration tests (the small set, 60 MD steps)."""
    path = tmp_path_factory.mktemp("gate") / "gate.yaml"
    path.write_text(yaml.safe_dump({
        **QUICK_STAGES,
        "md": MD,
        # A linear fit over 0.03 ps measures fluctuations, not drift: informational here.
        "criteria": {"min_force_r2": {"bound": 0.9},
                     "drift_slope_meV_per_atom_per_ps": {"bound": 0.5, "required": False}},
        "molecules": str(small_set.molecules), "reference": str(small_set.reference),
    }))
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, gate_config: Path) -> Iterator[Stack]:
    """MLflow and Prefect servers for the session; the test process points at them.

    The URLs are put in the environment before prefect is imported, so that every thread of
    the test process (not only those that see the settings context) uses the session's server.
    """
    from flows.servers import free_port, start_mlflow_server, start_prefect_server

    home = tmp_path_factory.mktemp("stack")
    mlflow_port, prefect_port = free_port(), free_port()
    tracking_uri, prefect_api_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}/api"
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri, "PREFECT_API_URL": prefect_api_url,
        "MDGATE_CONFIG": str(gate_config), "MDGATE_HOME": str(home / "mdgate"),
        "MDGATE_MODELS": f"{GATED_PREFIX}*", "MDGATE_LEASE_S": "600", "MDGATE_MD_PARALLEL": "2",
        "MDGATE_GPU_LIMIT": "2", "MDGATE_CORES": "2", "MDGATE_MAX_GATES": "2", "MDGATE_POLL_S": "1",
        "MDGATE_SWEEP_INTERVAL_S": "86400", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # the suite registers its own models as pickles (any name): they load in the model process
        "MDGATE_ALLOW_PICKLES": "*",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    mlflow = start_mlflow_server(home / "mlflow", port=mlflow_port,
                                 extra_env={"MLFLOW_WEBHOOK_CACHE_TTL": "1"})
    prefect = start_prefect_server(home / "prefect", port=prefect_port, ui=False)
    try:
        mlflow.wait_up(180)
        prefect.wait_up(180)
        with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
            yield Stack(tracking_uri, prefect_api_url, home, gate_config, env)
    finally:
        mlflow.stop()
        prefect.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class MlflowOnly:
    """An MLflow server with no Prefect server beside it."""

    tracking_uri: str
    home: Path


@pytest.fixture(scope="session")
def mlflow_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowOnly]:
    """``mlflow server`` alone on a free port of 127.0.0.1 (SQLite, proxied artifacts), for
    one-off gating and tag searches; the test process environment is left as it is.
    """
    from flows.servers import free_port, start_mlflow_server

    home = tmp_path_factory.mktemp("mlflow-only")
    server = start_mlflow_server(home / "mlflow", port=free_port())
    try:
        server.wait_up(180)
        yield MlflowOnly(server.url, home)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registry(stack: Stack) -> Any:
    """The registry adapter on the session's MLflow server."""
    from registry import Registry

    return Registry(stack.tracking_uri)


@dataclass
class Served:
    """The ``mdgate serve`` subprocess."""

    process: subprocess.Popen
    webhook_url: str
    log: Path

    def log_tail(self, n: int = 40) -> str:
        """The last lines of its output."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def served(stack: Stack) -> Iterator[Served]:
    """``mdgate serve`` against the session's servers (it manages the MLflow webhook)."""
    import signal

    from flows.servers import free_port, is_up

    port = free_port()
    env = dict(os.environ, **stack.env, MDGATE_WEBHOOK_PORT=str(port), MDGATE_WEBHOOK_SECRET=WEBHOOK_SECRET,
               PYTHONPATH=str(REPO_ROOT), PREFECT_HOME=str(stack.home / "serve-prefect-home"))
    log = stack.home / "serve.log"
    mdgate = str(Path(sys.executable).parent / "mdgate")
    with log.open("wb") as out:
        process = subprocess.Popen([mdgate, "serve", "--no-start-servers"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=stack.home)
    s = Served(process, f"http://127.0.0.1:{port}/mlflow", log)
    try:
        deadline = time.monotonic() + 180
        while "mdgate serve: ready" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mdgate serve did not start:\n{s.log_tail()}")
            time.sleep(0.5)
        assert is_up(f"http://127.0.0.1:{port}/health")
        time.sleep(1.5)  # the MLflow webhook cache (1 s TTL) now sees the subscription
        yield s
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------- models


def _quick_trained_model(path: Path, reference: Path, atomrefs: torch.Tensor,
                         seconds_max: float = 90.0) -> Path:
    """A small PaiNN fitted to the forces of the small reference set for ~150 steps (R² ≈ 0.97)."""
    from ase.io import read

    from tests.models import build_painn

    frames = read(str(reference), ":")
    model = build_painn(16, 2, atomrefs, seed=1)
    model.do_postprocessing = False
    z = torch.tensor(np.concatenate([a.numbers for a in frames]))
    r = torch.tensor(np.concatenate([a.positions for a in frames]), dtype=torch.float32)
    f = torch.tensor(np.concatenate([a.get_forces() for a in frames]), dtype=torch.float32)
    n = torch.tensor([len(a) for a in frames])
    idx_m = torch.repeat_interleave(torch.arange(len(frames)), n)
    ii, jj, off = [], [], 0
    for a in frames:
        k = len(a)
        i, j = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        keep = i != j
        ii.append(i[keep] + off)
        jj.append(j[keep] + off)
        off += k
    i_all, j_all = torch.cat(ii), torch.cat(jj)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    t0 = time.monotonic()
    for _ in range(150):
        inputs = {"_atomic_numbers": z, "_positions": r.clone(), "_idx_m": idx_m, "_n_atoms": n,
                  "_idx_i": i_all, "_idx_j": j_all, "_offsets": torch.zeros(len(i_all), 3),
                  "_cell": torch.zeros(len(frames), 3, 3),
                  "_pbc": torch.zeros(len(frames), 3, dtype=torch.bool)}
        loss = ((model(inputs)["forces"] - f) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if time.monotonic() - t0 > seconds_max:
            break
    model.do_postprocessing = True
    torch.save(model, path)
    return path


@dataclass
class ModelFile:
    """A model file and the metadata to register it with."""

    path: Path
    meta: dict[str, Any]


@pytest.fixture(scope="session")
def good_model(request: pytest.FixtureRequest, small_set: Any, atomrefs: torch.Tensor) -> ModelFile:
    """examples/models/painn_small.pt once it is trained (its .json beside it), else a small
    PaiNN fitted for a few seconds to the small reference set (cached between sessions).
    """
    sidecar = PAINN_SMALL.with_suffix(".json")
    if PAINN_SMALL.is_file() and sidecar.is_file():
        return ModelFile(PAINN_SMALL, json.loads(sidecar.read_text()))
    folder = Path(request.config.cache.mkdir("mdgate-quick-painn-v1"))
    path = folder / "quick_painn.pt"
    if not path.is_file():
        _quick_trained_model(path, small_set.reference, atomrefs)
    return ModelFile(path, {"level_of_theory": "GFN2-xTB"})


@pytest.fixture(scope="session")
def bad_model(untrained_model_path: Path) -> ModelFile:
    """An untrained schnetpack PaiNN (rejected: wrong forces, bonds break)."""
    return ModelFile(untrained_model_path, {"level_of_theory": "GFN2-xTB"})


# ------------------------------------------------------------------------------- helpers


def wait_for_statuses(registry: Any, name: str, versions: dict[str, float], final: bool = True,
                      timeout_s: float = 300.0) -> dict[str, tuple[Any, dict[str, float]]]:
    """Poll versions together until each has a verdict (or, with ``final=False``, is Running).

    Args:
        registry: the registry adapter.
        name: registered model name.
        versions: version → ``time.monotonic()`` its clock starts at (e.g. its registration).
        final: wait for a verdict (else for Running or a verdict).
        timeout_s: give up (AssertionError) after this long.

    Returns:
        version → (the version, seconds after its start at which each status was first seen).
    """
    seen: dict[str, dict[str, float]] = {v: {} for v in versions}
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(versions):
        for version, t0 in versions.items():
            if version in done:
                continue
            info = registry.get_version(name, version)
            status = info.status
            if status is not None and status.value not in seen[version]:
                seen[version][status.value] = time.monotonic() - t0
            if status is not None and (status.is_final or (not final and status.value == "Running")):
                done[version] = info
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: versions {sorted(set(versions) - set(done))} not done after "
                                 f"{timeout_s} s: {seen}")
        time.sleep(0.2)
    return {v: (done[v], seen[v]) for v in versions}


def wait_for_status(registry: Any, name: str, version: str, final: bool = True, timeout_s: float = 300.0,
                    since: float | None = None) -> tuple[Any, dict[str, float]]:
    """:func:`wait_for_statuses` for one version (clock from ``since``, default now)."""
    start = since if since is not None else time.monotonic()
    return wait_for_statuses(registry, name, {version: start}, final, timeout_s)[version]


def flow_runs_named(run_name: str) -> list[Any]:
    """Prefect flow runs with this name, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
    return sorted(runs, key=lambda r: r.created)


def final_flow_runs(run_name: str, timeout_s: float = 60.0) -> list[Any]:
    """Flow runs with this name, oldest first, once each is in a final state: a gate publishes its
    status to MLflow a moment before its flow run ends (after ``timeout_s``: as they are).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        runs = flow_runs_named(run_name)
        if (runs and all(r.state is not None and r.state.is_final() for r in runs)) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def record_timing(key: str, seconds: float) -> None:
    """Keep a measured number in out/integration_timings.json (for the README and reports)."""
    TIMINGS.parent.mkdir(exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    data.setdefault(key, []).append(round(seconds, 2))
    TIMINGS.write_text(json.dumps(data, indent=1))


def copy_model(src: Path, dst_dir: Path, name: str = "model.pt") -> Path:
    """A copy of a model file (to log it as a plain artifact)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, dst_dir / name))
