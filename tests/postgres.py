"""A throwaway PostgreSQL server for the integration tests: ``initdb`` into a temporary folder and
``postgres`` on a free port of 127.0.0.1, password authentication, as a non-root user.

Debian's server binaries (``/usr/lib/postgresql/<major>/bin``) are used where present; when they
are missing and the tests run as root with apt, ``apt-get install -y postgresql`` installs them
(once, a minute or two). Otherwise the tests that need the server are skipped, saying why.

Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``): the data lives as
long as the test session, and the shared 2-core machine should not wait for the disk. Never use
these settings for a real server (deployments/README.md has the production commands).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_USER = "mdgate"
#: Server settings for a test server on a small shared machine (not for production).
TEST_SETTINGS = {
    "listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off",
    "full_page_writes": "off", "shared_buffers": "32MB", "max_connections": "200",
    "log_min_messages": "warning",
}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed and cannot be installed here (the reason says why)."""


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (the newest Debian major, else PATH)."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "postgres").exists():
        return Path(initdb).parent
    return None


def ensure_installed(timeout_s: float = 900.0) -> Path:
    """The server binaries' folder, installing Debian's ``postgresql`` package if needed.

    Raises:
        PostgresUnavailable: not installed, and not root or no apt-get, or the install failed.
    """
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0:
        raise PostgresUnavailable("PostgreSQL server binaries not found and not root to apt-get install "
                                  "postgresql: install it (apt-get install -y postgresql)")
    if shutil.which("apt-get") is None:
        raise PostgresUnavailable("PostgreSQL server binaries not found and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    log = []
    for cmd in (install, ["apt-get", "update", "-q"], install):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        log.append(f"$ {' '.join(cmd)} -> {proc.returncode}\n{proc.stderr[-800:]}")
        if cmd is install and proc.returncode == 0 and (bindir := find_bindir()) is not None:
            return bindir
    raise PostgresUnavailable("apt-get install postgresql failed:\n" + "\n".join(log))


def _server_user() -> tuple[int, int] | None:
    """``(uid, gid)`` to run the server as when this process is root (postgres refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "postgres"], check=True, capture_output=True)
        entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


@dataclass
class Postgres:
    """A running test server."""

    bindir: Path
    root: Path
    port: int
    password: str
    process: subprocess.Popen
    log: Path
    host: str = "127.0.0.1"
    user: str = PG_USER

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of a database: ``postgresql+psycopg2`` (MLflow; plain ``postgresql://``
        means psycopg 3 from SQLAlchemy 2.1 on) or ``postgresql+asyncpg`` (Prefect).
        """
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):  # a psycopg2 connection
        """A psycopg2 connection (autocommit)."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=database, connect_timeout=5)
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> str:
        """Create a database; return its ``postgresql://`` URL."""
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple]:
        """Rows of a query."""
        with contextlib.closing(self.connect(database)) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def wait_up(self, timeout_s: float = 60.0) -> None:
        """Wait until the server accepts connections (RuntimeError with its log if not)."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                self.connect().close()
                return
            except Exception as e:
                last = e
                time.sleep(0.3)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"postgres did not start ({last}):\n{tail}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, close sessions), then remove the data."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(port: int) -> Postgres:
    """``initdb`` and start a server on ``127.0.0.1:port`` (installing PostgreSQL if needed).

    Raises:
        PostgresUnavailable: see :func:`ensure_installed`.
        RuntimeError: the server did not start.
    """
    bindir = ensure_installed()
    owner = _server_user()
    # Not under pytest's tmp folders: those are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="mdgate-pg-"))
    data, sockets, log = root / "data", root / "run", root / "postgres.log"
    password = secrets.token_urlsafe(16)
    (root / "pw").write_text(password + "\n")
    sockets.mkdir()
    log.touch()
    ids = {}
    if owner is not None:
        for path in (root, sockets, root / "pw", log):
            os.chown(path, *owner)
        ids = {"user": owner[0], "group": owner[1], "extra_groups": []}
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={root / 'pw'}",
                    "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, timeout=180, cwd=root, **ids)
    settings = {**TEST_SETTINGS, "port": str(port), "unix_socket_directories": str(sockets)}
    cmd = [str(bindir / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        cmd += ["-c", f"{key}={value}"]
    with log.open("ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=root, **ids)
    server = Postgres(bindir, root, port, password, process, log)
    try:
        server.wait_up()
    except BaseException:
        server.stop()
        raise
    return server
