"""The reliability suite: the gate under faults, bad input and load, on real servers.

Its own ``mlflow server`` (SQLite, local proxied artifacts) and ``prefect server start``
(SQLite) on free ports of 127.0.0.1, which the fault tests stop and restart, and its own
worker: ``mdgate serve --no-start-servers`` (gate and sweep deployments, webhook receiver) as a
subprocess that the tests start, stop and kill. MD is tiny (two small molecules, 60 steps).

Every test adds what it measured to one session-scoped :class:`Tally`. At the end the suite
prints one line of counts and fails the run when a count is off::

    reliability: faults 7/7 survived, bad inputs N/N handled, versions 20 registered 20 gated-once
    0 lost 0 wrongly-approved

*faults* and *bad inputs* count cases; *registered* and *gated-once* count the load burst's
versions (gated exactly once: one flow run reached a verdict and one validation run holds it);
*lost* (not final at the end) and *wrongly-approved* (Approved where the test expected
otherwise) count every version the suite registered with an expectation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.secret import SECRET

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE_DIR = Path(__file__).resolve().parent
#: Registered model names the reliability worker gates; names outside it are never gated by it.
PREFIX = "rel-"
#: The faults the suite injects (each must be survived).
FAULTS = ("mlflow-restart-during-gate", "duplicate-webhooks", "racing-sweeps", "disk-full",
          "crash-between-artifacts-and-status", "worker-killed-mid-gate",
          "prefect-restart-between-trigger-and-run")
MIN_BAD_INPUTS = 15
LOAD_VERSIONS = 20
#: Worker settings (MDGATE_*): short leases and MD timeouts where the tests need them.
WORKER_ENV = {
    "MDGATE_LEASE_S": "300", "MDGATE_MD_TIMEOUT_S": "45", "MDGATE_MD_PARALLEL": "2",
    "MDGATE_CORES": "2", "MDGATE_GPU_LIMIT": "2", "MDGATE_MAX_GATES": "2", "MDGATE_POLL_S": "1",
    "MDGATE_SWEEP_INTERVAL_S": "86400", "MDGATE_MODELS": f"{PREFIX}*",
    # the suite registers its models as pickles: they load in the model process
    "MDGATE_ALLOW_PICKLES": f"{PREFIX}*",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


# ---------------------------------------------------------------------------------- tally


@dataclass
class Tally:
    """What the suite measured."""

    faults: dict[str, bool] = field(default_factory=dict)
    bad_inputs: dict[str, bool] = field(default_factory=dict)
    load_registered: int = 0
    load_gated_once: int = 0
    expected: dict[tuple[str, str], str] = field(default_factory=dict)
    """(name, version) → the verdict expected (``Approved``, ``Rejected``, ``Error``) or
    ``not-Approved`` (Rejected or Error)."""
    lost: int | None = None
    wrongly_approved: int | None = None
    notes: list[str] = field(default_factory=list)

    def expect(self, name: str, version: str, verdict: str) -> None:
        """Record what a version must end as."""
        self.expected[(name, str(version))] = verdict

    def line(self) -> str:
        """The summary line."""
        f_ok, f_n = sum(self.faults.values()), len(self.faults)
        b_ok, b_n = sum(self.bad_inputs.values()), len(self.bad_inputs)
        lost = "?" if self.lost is None else self.lost
        wrong = "?" if self.wrongly_approved is None else self.wrongly_approved
        return (f"reliability: faults {f_ok}/{f_n} survived, bad inputs {b_ok}/{b_n} handled, "
                f"versions {self.load_registered} registered {self.load_gated_once} gated-once "
                f"{lost} lost {wrong} wrongly-approved")

    def problems(self, complete: bool) -> list[str]:
        """Counts that are off (with ``complete``, the whole suite ran: totals are checked too)."""
        out = []
        if sum(self.faults.values()) != len(self.faults):
            out.append(f"faults not survived: {sorted(k for k, v in self.faults.items() if not v)}")
        if sum(self.bad_inputs.values()) != len(self.bad_inputs):
            out.append(f"bad inputs not handled: {sorted(k for k, v in self.bad_inputs.items() if not v)}")
        if self.load_gated_once != self.load_registered:
            out.append(f"{self.load_registered - self.load_gated_once} load versions not gated exactly once")
        if self.lost:
            out.append(f"{self.lost} versions lost")
        if self.wrongly_approved:
            out.append(f"{self.wrongly_approved} versions wrongly approved")
        if complete:
            if set(self.faults) != set(FAULTS):
                out.append(f"faults run {sorted(self.faults)} != {sorted(FAULTS)}")
            if len(self.bad_inputs) < MIN_BAD_INPUTS:
                out.append(f"only {len(self.bad_inputs)} bad inputs (at least {MIN_BAD_INPUTS})")
            if self.load_registered != LOAD_VERSIONS:
                out.append(f"load registered {self.load_registered} versions, not {LOAD_VERSIONS}")
            if self.lost is None or self.wrongly_approved is None:
                out.append("the final check (lost, wrongly approved) did not run")
        return out


TALLY = Tally()
_ITEMS: dict[str, int] = {"collected": 0, "selected": 0}


@pytest.fixture(scope="session")
def tally() -> Tally:
    """The session's measured counts."""
    return TALLY


def _in_suite(item: pytest.Item) -> bool:
    return SUITE_DIR in Path(str(item.fspath)).resolve().parents


@pytest.hookimpl(hookwrapper=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> Iterator[None]:
    """Count the suite's tests before and after deselection (-k, -m)."""
    _ITEMS["collected"] = sum(1 for i in items if _in_suite(i))
    yield
    _ITEMS["selected"] = sum(1 for i in items if _in_suite(i))


_OUTCOMES: dict[str, int] = {"passed": 0, "other": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the suite's test outcomes (a skipped or failed test makes the run incomplete)."""
    if SUITE_DIR.name not in report.nodeid.split("/"):
        return
    if report.when == "call" and report.passed:
        _OUTCOMES["passed"] += 1
    elif report.failed or report.skipped:
        _OUTCOMES["other"] += 1


def _complete() -> bool:
    n = _ITEMS["collected"]
    return n > 0 and _ITEMS["selected"] == n and _OUTCOMES["passed"] == n and _OUTCOMES["other"] == 0


def _measured() -> bool:
    """Did the suite measure anything (its server tests ran, or all of it was selected)?"""
    t = TALLY
    return bool(t.faults or t.bad_inputs or t.load_registered or t.lost is not None) or (
        _ITEMS["selected"] > 0 and _ITEMS["selected"] == _ITEMS["collected"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a count is off."""
    if not _measured():
        return
    problems = TALLY.problems(_complete())
    if problems:
        TALLY.notes += problems
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the summary line (and what is off, if anything)."""
    if not _measured():
        return
    terminalreporter.write_sep("-", "reliability")
    for note in TALLY.notes:
        terminalreporter.write_line(f"reliability: {note}")
    terminalreporter.write_line(TALLY.line())


# ---------------------------------------------------------------------------------- servers


@dataclass
class RelStack:
    """The suite's servers (restartable) and the environment pointing at them."""

    home: Path
    mlflow_port: int
    prefect_port: int
    webhook_port: int
    config: Path
    env: dict[str, str]
    mlflow: Any = None
    prefect: Any = None

    @property
    def tracking_uri(self) -> str:
        """MLflow."""
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        """Prefect API."""
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def webhook_url(self) -> str:
        """The worker's webhook receiver."""
        return f"http://127.0.0.1:{self.webhook_port}/mlflow"

    @property
    def artifacts(self) -> Path:
        """MLflow's artifact store (proxied: every artifact goes through the server)."""
        return self.home / "mlflow" / "mlartifacts"

    def start_mlflow(self, wait: bool = True) -> float:
        """Start the MLflow server (same database, artifacts, port); return seconds to healthy."""
        from flows.servers import start_mlflow_server

        t0 = time.monotonic()
        self.mlflow = start_mlflow_server(self.home / "mlflow", port=self.mlflow_port,
                                          extra_env={"MLFLOW_WEBHOOK_CACHE_TTL": "1"})
        if wait:
            self.mlflow.wait_up(240)
        return time.monotonic() - t0

    def stop_mlflow(self) -> None:
        """Stop the MLflow server (process group)."""
        self.mlflow.stop()

    def start_prefect(self) -> float:
        """Start the Prefect server (same database and port); return seconds to healthy."""
        from flows.servers import start_prefect_server

        t0 = time.monotonic()
        self.prefect = start_prefect_server(self.home / "prefect", port=self.prefect_port, ui=False)
        self.prefect.wait_up(240)
        return time.monotonic() - t0

    def stop_prefect(self) -> None:
        """Stop the Prefect server (process group)."""
        self.prefect.stop()


@pytest.fixture(scope="session")
def rel_stack(tmp_path_factory: pytest.TempPathFactory, gate_config: Path) -> Iterator[RelStack]:
    """MLflow and Prefect servers of the suite; the test process points at them meanwhile."""
    from flows.servers import free_port

    home = Path(tempfile.mkdtemp(prefix="mdgate-rel-"))  # short path, outside pytest's tmp
    s = RelStack(home, free_port(), free_port(), free_port(), gate_config, {})
    s.env = {
        "MLFLOW_TRACKING_URI": s.tracking_uri, "PREFECT_API_URL": s.prefect_api_url,
        "MDGATE_CONFIG": str(gate_config), "MDGATE_HOME": str(home / "test-process"),
        "MDGATE_MODELS": f"{PREFIX}*", "MDGATE_LEASE_S": WORKER_ENV["MDGATE_LEASE_S"],
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    saved = {k: os.environ.get(k) for k in s.env}
    os.environ.update(s.env)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        s.start_mlflow(wait=False)
        s.start_prefect()
        s.mlflow.wait_up(240)
        with temporary_settings(updates={PREFECT_API_URL: s.prefect_api_url}):
            yield s
    finally:
        for server in (s.mlflow, s.prefect):
            if server is not None:
                server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for mount in _mounts_under(home):
            subprocess.run(["umount", "-l", mount], check=False)
        if os.environ.get("MDGATE_KEEP_RELIABILITY_HOME") != "1":
            shutil.rmtree(home, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1] for line in lines if line.split()[1].startswith(str(path))]


@pytest.fixture(scope="session")
def rel_registry(rel_stack: RelStack) -> Any:
    """The registry adapter on the suite's MLflow server."""
    from registry import Registry

    return Registry(rel_stack.tracking_uri)


# ---------------------------------------------------------------------------------- worker


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Peak resident memory of a process tree, sampled every ``interval_s`` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_tree = 0
        self.peak_process = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = [rss_bytes(p) for p in process_tree(self.pid)]
            self.peak_tree = max(self.peak_tree, sum(sizes))
            self.peak_process = max(self.peak_process, max(sizes, default=0))
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Worker:
    """``mdgate serve --no-start-servers`` against the suite's servers, in its own session."""

    def __init__(self, stack: RelStack):
        self.stack = stack
        self.process: subprocess.Popen | None = None
        self.log = stack.home / "logs" / "worker.log"
        self.starts = 0

    def env(self, **overrides: str) -> dict[str, str]:
        """The worker's environment: the suite's servers, WORKER_ENV, the webhook secret."""
        env = dict(os.environ)
        env.update(self.stack.env)
        env.update(WORKER_ENV)
        env.update({
            "MDGATE_WEBHOOK_PORT": str(self.stack.webhook_port), "MDGATE_WEBHOOK_SECRET": SECRET,
            "MDGATE_HOME": str(self.stack.home / "worker"), "PYTHONPATH": str(REPO_ROOT),
            "PREFECT_HOME": str(self.stack.home / "worker-prefect-home"),
        })
        env.update(overrides)
        return env

    @property
    def pid(self) -> int:
        """The serve process."""
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 240.0, **overrides: str) -> float:
        """Start and wait until it says it is ready; return the seconds that took."""
        assert self.process is None or self.process.poll() is not None, "worker already running"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        mark = self.log.stat().st_size if self.log.exists() else 0
        t0 = time.monotonic()
        with self.log.open("ab") as out:
            out.write(f"\n===== worker start {self.starts + 1} =====\n".encode())
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "mdgate"), "serve", "--no-start-servers"],
                env=self.env(**overrides), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.stack.home)
        self.starts += 1
        while "mdgate serve: ready" not in self.log.read_bytes()[mark:].decode(errors="replace"):
            if self.process.poll() is not None or time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"the worker did not start:\n{self.tail()}")
            time.sleep(0.5)
        time.sleep(1.5)  # MLflow caches webhook subscriptions for 1 s here
        return time.monotonic() - t0

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM to the worker's process group, then SIGKILL to whatever of its tree is left."""
        if self.process is None or self.process.poll() is not None:
            return
        tree = process_tree(self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self._kill(tree)

    def kill(self) -> list[int]:
        """SIGKILL the worker and every process under it at once (the machine dies)."""
        assert self.process is not None
        tree = process_tree(self.pid)
        self._kill(tree)
        self.process.wait(30)
        return tree

    @staticmethod
    def _kill(pids: list[int]) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)

    def tail(self, n: int = 60) -> str:
        """The last lines of the worker's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def worker(rel_stack: RelStack) -> Iterator[Worker]:
    """The suite's worker, started once (tests may stop, kill and start it again)."""
    w = Worker(rel_stack)
    w.start()
    try:
        yield w
    finally:
        w.stop()


# ---------------------------------------------------------------------------------- models


@dataclass
class Sources:
    """Model artifacts logged once, each registrable as many versions as needed."""

    registry: Any
    runs: dict[str, str] = field(default_factory=dict)

    def source(self, key: str, files: dict[str, bytes], path: str = "model",
               params: dict[str, str] | None = None) -> tuple[str, str]:
        """``(source URI, run id)`` of a run holding ``files`` under ``path`` (logged once per key)."""
        if key not in self.runs:
            client = self.registry.client
            run = client.create_run("0", run_name=f"source/{key}")
            with tempfile.TemporaryDirectory() as tmp:
                for fname, data in files.items():
                    (Path(tmp) / fname).write_bytes(data)
                    client.log_artifact(run.info.run_id, str(Path(tmp) / fname), path)
            for k, v in (params or {}).items():
                client.log_param(run.info.run_id, k, v)
            client.set_terminated(run.info.run_id)
            self.runs[key] = run.info.run_id
        run_id = self.runs[key]
        return f"runs:/{run_id}/{path}", run_id

    def register(self, name: str, key: str, files: dict[str, bytes] | None = None, tags: dict[str, str] | None = None,
                 path: str = "model", params: dict[str, str] | None = None) -> str:
        """A new version of ``name`` from the source ``key`` (plain MLflow, ``tags`` on the version)."""
        from mlflow.exceptions import MlflowException

        source, run_id = self.source(key, files or {}, path, params)
        client = self.registry.client
        with contextlib.suppress(MlflowException):
            client.create_registered_model(name)
        return str(client.create_model_version(name, source, run_id=run_id, tags=tags or {}).version)


@pytest.fixture(scope="session")
def sources(rel_registry: Any) -> Sources:
    """Model artifacts of the suite, logged once each."""
    return Sources(rel_registry)


#: Version tags of the suite's schnetpack models (the metadata ``mdgate register`` writes).
META_TAGS = {"mdgate.energy_unit": "eV", "mdgate.position_unit": "Angstrom", "mdgate.cutoff_A": "5",
             "mdgate.level_of_theory": "GFN2-xTB"}


@dataclass
class Models:
    """Model files of the suite (bytes of ``torch.save`` files)."""

    good: bytes
    bad: bytes
    slow: bytes
    folder: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory, good_model: Any, bad_model: Any) -> Models:
    """The trained small PaiNN (Approved), an untrained one (Rejected), and the trained one
    slowed to ~0.15 s per call (MD of 60 steps lasts ~10 s: a window to inject faults in).
    """
    import torch

    from tests.reliability.rel_models import SlowModel

    folder = tmp_path_factory.mktemp("rel-models")
    slow = folder / "slow.pt"
    torch.save(SlowModel(torch.load(good_model.path, weights_only=False), 0.15), slow)
    return Models(good=Path(good_model.path).read_bytes(), bad=Path(bad_model.path).read_bytes(),
                  slow=slow.read_bytes(), folder=folder)


def unique(kind: str) -> str:
    """A registered model name the worker gates."""
    return f"{PREFIX}{kind}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------------- helpers


class paused_webhook:
    """Disable the worker's MLflow webhook while versions are registered (no trigger fires)."""

    def __init__(self, registry: Any):
        self.registry = registry

    def __enter__(self) -> paused_webhook:
        hooks = [h for h in self.registry.client.list_webhooks() if h.name == "mdgate"]
        self.ids = [h.webhook_id for h in hooks]
        for i in self.ids:
            self.registry.set_webhook_active(i, False)
        time.sleep(1.5)  # the server's subscription cache lives 1 s
        return self

    def __exit__(self, *exc: object) -> None:
        for i in self.ids:
            self.registry.set_webhook_active(i, True)
        time.sleep(1.5)


def validation_runs(registry: Any, name: str, version: str) -> list[Any]:
    """MLflow validation runs of a version (one per published verdict, plus orphans of gates
    that stored a report and then died).
    """
    exp = registry.client.get_experiment_by_name("mdgate")
    if exp is None:
        return []
    return registry.client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mdgate.model` = '{name}' AND tags.`mdgate.version` = '{version}'",
        max_results=100)


VERDICT_STATES = {"Approved", "Rejected", "Error"}


def verdict_runs(name: str, version: str, wait_s: float = 0.0) -> list[Any]:
    """Prefect gate flow runs of a version that reached a verdict state (waiting up to ``wait_s``
    for the first: a flow run reaches its final state just after it published the status).
    """
    from tests.integration import flow_runs_named

    deadline = time.monotonic() + wait_s
    while True:
        runs = [r for r in flow_runs_named(f"gate/{name}/v{version}")
                if r.state and r.state.name in VERDICT_STATES]
        if runs or time.monotonic() >= deadline:
            return runs
        time.sleep(1)


def task_runs(flow_run_id: Any) -> list[Any]:
    """Task runs of a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def wait_until(what: str, predicate: Any, timeout_s: float, interval_s: float = 0.5) -> Any:
    """Poll ``predicate()`` until it returns something truthy (bounded in time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def md_running(name: str, version: str) -> Any:
    """The gate flow run of a version whose MD tasks run now, if any."""
    from tests.integration import flow_runs_named

    for run in flow_runs_named(f"gate/{name}/v{version}"):
        if run.state and run.state.is_running():
            if any(t.name.startswith("md-") and t.state and t.state.is_running() for t in task_runs(run.id)):
                return run
    return None
