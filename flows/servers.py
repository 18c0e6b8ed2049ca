"""The embedded default: MLflow and Prefect servers on 127.0.0.1 as child processes.

Each server runs in its own process group and is stopped by group: MLflow's uvicorn and job
runner children (and Prefect's services) would otherwise keep the port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
from cryptography.fernet import Fernet

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ServerProcess:
    """A server started by mdgate."""

    name: str
    url: str
    health_url: str
    process: subprocess.Popen
    log: Path

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        # children that outlived their parent
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def wait_up(self, timeout_s: float = 120.0) -> None:
        """Wait until the health URL answers.

        Raises:
            RuntimeError: the process exited or did not answer in time (with its log's tail).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} server exited ({self.process.returncode}): "
                                   f"{self.log_tail()}")
            if is_up(self.health_url):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} server did not answer {self.health_url} in {timeout_s:g} s: "
                           f"{self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def is_up(url: str, timeout_s: float = 2.0) -> bool:
    """Does ``url`` answer 200?"""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _spawn(name: str, cmd: list[str], env: dict[str, str], log: Path, url: str, health: str) -> ServerProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return ServerProcess(name, url, health, process, log)


def webhook_encryption_key(home: Path) -> str:
    """The Fernet key MLflow encrypts webhook secrets with, kept in ``home`` (made once).

    Without a stable key, stored webhook secrets cannot be read after a restart (mlflow #19896).
    """
    path = home / "mlflow-webhook.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Fernet.generate_key())
        path.chmod(0o600)
    return path.read_text().strip()


def start_mlflow_server(home: Path, host: str = "127.0.0.1", port: int = 5000,
                        extra_env: dict[str, str] | None = None, backend_store_uri: str | None = None,
                        workers: int = 1) -> ServerProcess:
    """``mlflow server`` with SQLite in ``home/mlflow.db`` (or ``backend_store_uri``, e.g.
    ``postgresql://user:password@host:5432/mlflow``) and proxied artifacts in ``home/mlartifacts``,
    configured to deliver webhooks to a receiver on a private address. More than one uvicorn
    worker needs a server database (PostgreSQL), not SQLite.
    """
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": webhook_encryption_key(home),
        # Subscriptions are cached per event; a short TTL makes a new subscription live soon.
        "MLFLOW_WEBHOOK_CACHE_TTL": os.environ.get("MLFLOW_WEBHOOK_CACHE_TTL", "5"),
    })
    env.update(extra_env or {})
    store = backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    cmd = [_tool("mlflow"), "server", "--backend-store-uri", store,
           "--artifacts-destination", str(home / "mlartifacts"), "--host", host, "--port", str(port),
           "--workers", str(workers)]
    url = f"http://{host}:{port}"
    return _spawn("mlflow", cmd, env, home / "logs" / "mlflow.log", url, f"{url}/health")


def start_prefect_server(home: Path, host: str = "127.0.0.1", port: int = 4200,
                         extra_env: dict[str, str] | None = None, ui: bool = True,
                         database_url: str | None = None) -> ServerProcess:
    """``prefect server start`` with SQLite in ``home/prefect.db`` (or ``database_url``, e.g.
    ``postgresql+asyncpg://user:password@host:5432/prefect``).
    """
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    database = database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    url = f"http://{host}:{port}/api"
    env.update({
        "PREFECT_HOME": str(home / "prefect"),
        # The UI's browser code calls this URL: without it, a server on another port than 4200
        # serves a UI that cannot reach its own API.
        "PREFECT_UI_API_URL": url,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })
    env.update(extra_env or {})
    cmd = [_tool("prefect"), "server", "start", "--host", host, "--port", str(port)]
    if not ui:
        cmd.append("--no-ui")
    return _spawn("prefect", cmd, env, home / "logs" / "prefect.log", url, f"{url}/health")


def local_port(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of a URL on this machine, else ``None``."""
    parsed = urlparse(url)
    if parsed.scheme != "http" or parsed.hostname not in LOCAL_HOSTS:
        return None
    return parsed.hostname or "127.0.0.1", parsed.port or 80


def ensure_local_servers(tracking_uri: str, prefect_api_url: str, home: Path) -> list[ServerProcess]:
    """Start the MLflow and Prefect servers the URLs name when they are local and not running.

    Raises:
        RuntimeError: a server is remote and unreachable, or did not start.
    """
    started: list[ServerProcess] = []
    wanted = [("mlflow", tracking_uri, f"{tracking_uri.rstrip('/')}/health", start_mlflow_server),
              ("prefect", prefect_api_url, f"{prefect_api_url.rstrip('/')}/health", start_prefect_server)]
    try:
        for name, url, health, start in wanted:
            if is_up(health):
                continue
            where = local_port(url)
            if where is None:
                raise RuntimeError(f"{name} at {url} does not answer, and it is not local to start it")
            started.append(start(home, where[0], where[1]))  # type: ignore[operator]
        for server in started:
            server.wait_up()
    except BaseException:
        for server in started:
            server.stop()
        raise
    return started
