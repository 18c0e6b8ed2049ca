"""The embedded default end to end: ``make demo`` / ``mdgate demo``.

Starts ``mdgate serve`` (which starts MLflow and Prefect on 127.0.0.1 with SQLite) in the
background, registers the example teacher and its distilled students as versions of one
registered model (students carry ``mdgate.parent`` → the teacher), waits while the webhook
path gates each one, and prints the study's table. The servers keep running so that the UIs
can be browsed; ``mdgate demo --stop`` stops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flows.servers import is_up
from flows.settings import Settings
from registry import Registry, VersionInfo
from registry import types as T
from registry.artifacts import download, file_sha256

MODEL_NAME = "painn-md17"
#: (file stem in examples/models, parent stem or None) in registration order.
STUDY = (("teacher", None), ("student_2x", "teacher"), ("student_5x", "teacher"), ("student_20x", "teacher"))
REPO = Path(__file__).resolve().parents[1]


def demo_profile() -> Path:
    """The packaged short MD profile of the demo."""
    return Path(str(resources.files("mdgate") / "data" / "demo.yaml"))


@dataclass
class Row:
    """One line of the study's table."""

    stem: str
    version: VersionInfo
    results: dict | None = None
    report: Path | None = None


def _pid_file(settings: Settings) -> Path:
    return settings.home / "demo-serve.pid"


def serve_running(settings: Settings) -> bool:
    """Is the demo's ``mdgate serve`` running?"""
    pid_file = _pid_file(settings)
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def start_serve(settings: Settings, config: Path, timeout_s: float = 300.0) -> None:
    """Start ``mdgate serve`` in its own session; wait until it says it is ready."""
    settings.home.mkdir(parents=True, exist_ok=True)
    log = settings.home / "logs" / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0
    env = dict(os.environ, MDGATE_CONFIG=str(config), MDGATE_HOME=str(settings.home),
               MDGATE_TRACKING_URI=settings.tracking_uri, MDGATE_PREFECT_API_URL=settings.prefect_api_url)
    mdgate = Path(sys.executable).parent / "mdgate"
    with log.open("ab") as out:
        proc = subprocess.Popen([str(mdgate), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _pid_file(settings).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[start:].splitlines()[-15:]
            raise RuntimeError("mdgate serve exited:\n" + "\n".join(tail))
        if "mdgate serve: ready" in log.read_text(errors="replace")[start:]:
            return
        time.sleep(1.0)
    raise RuntimeError(f"mdgate serve was not ready after {timeout_s:g} s; see {log}")


def stop_serve(settings: Settings) -> bool:
    """Stop the demo's ``mdgate serve`` (and with it the servers it started)."""
    if not serve_running(settings):
        return False
    pid = int(_pid_file(settings).read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    for _ in range(60):
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.5)
    _pid_file(settings).unlink(missing_ok=True)
    return True


def register_study(registry: Registry, models_dir: Path, echo) -> list[Row]:
    """Register the teacher and the students once; a re-run reuses versions of the same files."""
    from registry.register import register_potential

    existing: dict[str, VersionInfo] = {}
    with contextlib.suppress(Exception):
        for v in registry.list_versions(MODEL_NAME):
            existing.setdefault(v.tags.get(T.MODEL_SHA256, ""), v)
    rows: list[Row] = []
    by_stem: dict[str, VersionInfo] = {}
    for stem, parent in STUDY:
        path = models_dir / f"{stem}.pt"
        if not path.is_file():
            if parent is None:
                raise FileNotFoundError(f"{path} is missing: train it with scripts/train_models.py (scripts/README.md)")
            echo(f"  {stem}: {path} is not there (train it with scripts/train_models.py): skipped")
            continue
        sha = file_sha256(path)
        if sha in existing:
            info = existing[sha]
            echo(f"  {stem}: already registered as {MODEL_NAME} v{info.version} ({info.status or 'no status'})")
        else:
            meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
            meta = {k: meta[k] for k in ("level_of_theory", "energy_unit", "position_unit", "energy_key",
                                         "forces_key", "cutoff_A") if meta.get(k) is not None}
            parent_ref = f"{MODEL_NAME}/{by_stem[parent].version}" if parent else None
            info = register_potential(registry, path, MODEL_NAME, parent_ref, meta,
                                      description=f"mdgate demo: {stem}")
            via = f" (parent {parent_ref})" if parent_ref else ""
            echo(f"  {stem}: registered {MODEL_NAME} v{info.version}{via}")
        by_stem[stem] = info
        rows.append(Row(stem, info))
    return rows


def wait_for_verdicts(registry: Registry, rows: list[Row], timeout_s: float, echo) -> None:
    """Poll the registry until every version has a final status, printing changes."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        pending = 0
        for row in rows:
            row.version = registry.get_version(MODEL_NAME, row.version.version)
            status = row.version.status.value if row.version.status else "(no status yet)"
            if seen.get(row.stem) != status:
                echo(f"  {time.strftime('%H:%M:%S')} v{row.version.version} {row.stem}: {status}")
                seen[row.stem] = status
            if not (row.version.status and row.version.status.is_final):
                pending += 1
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending} versions still not gated after {timeout_s:g} s")
        time.sleep(3.0)


def fetch_results(registry: Registry, rows: list[Row], out: Path) -> None:
    """Download each version's report, results.json and plots into ``out/v<version>/``."""
    for row in rows:
        if not row.version.report:
            continue
        dst = out / f"v{row.version.version}"
        base = row.version.report.rsplit("/", 1)[0]
        with contextlib.suppress(Exception):
            row.report = download(registry, row.version.report, dst, "report")
            results = download(registry, f"{base}/results.json", dst, "results")
            row.results = json.loads(results.read_text())
            download(registry, f"{base}/plots", dst, "plots")  # the report's figures, beside it


def _shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it lies under it (short enough for a table)."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def study_table(rows: list[Row]) -> list[dict[str, str]]:
    """The study's table: version, parameters, compression, R², drift, stability, verdict, report."""
    table = []
    for row in rows:
        r = row.results or {}
        model = r.get("model", {})
        mols = r.get("molecules", [])
        slopes = [abs(x["summary"].get("drift_slope_meV_per_atom_per_ps") or 0) for x in mols]
        pct = [x["summary"].get("total_drift_percent") or 0 for x in mols]
        n_traj = sum(len(x["replicas"]) for x in mols)
        n_ok = sum(1 for x in mols for rep in x["replicas"] if rep.get("failure") is None)
        stable = sum(1 for x in mols if x["passed"])
        acc = r.get("accuracy") or {}
        ratio = model.get("compression_ratio")
        table.append({
            "version": row.version.version,
            "model": row.stem,
            "parameters": f"{model['n_parameters']:,}" if model.get("n_parameters") else "-",
            "compression": f"{ratio:.1f}x" if ratio else "1x",
            "force R²": f"{acc['force_r2']:.4f}" if acc.get("force_r2") is not None else "-",
            "max drift (meV/atom/ps)": f"{max(slopes):.3f}" if slopes else "-",
            "max drift (seed %)": f"{max(pct):.4f}" if pct else "-",
            "stability": f"{n_ok}/{n_traj} completed, {stable}/{len(mols)} molecules pass" if mols else "-",
            "verdict": row.version.status.value if row.version.status else "-",
            "report": _shown_path(row.report) if row.report else (row.version.report or "-"),
        })
    return table


@contextlib.contextmanager
def _quiet_registration():
    """Keep the demo's output to its own lines: no MLflow run URLs, pickle warnings or INFO
    lines, and no torch deprecation warnings from loading the models (their facts are tagged).
    """
    import logging
    import warnings

    logger = logging.getLogger("mlflow")
    level = logger.level
    old = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)
        if old is None:
            os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
        else:
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = old


def run_demo(settings: Settings, models_dir: Path | None = None, timeout_s: float = 2400.0,
             echo=print) -> list[dict[str, str]]:
    """Run the whole demo; return the study table."""
    t0 = time.monotonic()
    config = settings.config or demo_profile()
    echo(f"mdgate demo: MD profile {config}")
    if serve_running(settings) and is_up(settings.tracking_uri.rstrip("/") + "/health"):
        echo("mdgate serve is already running: reusing it")
    else:
        echo(f"starting mdgate serve (MLflow {settings.tracking_uri}, Prefect {settings.prefect_api_url}; "
             f"log {settings.home / 'logs' / 'serve.log'}) ...")
        start_serve(settings, config)
    registry = Registry(settings.tracking_uri, settings.experiment)
    echo("registering the teacher and its students:")
    with _quiet_registration():
        rows = register_study(registry, models_dir or REPO / "examples" / "models", echo)
    echo("waiting for the gate (webhook → Prefect flow → MLflow tags):")
    wait_for_verdicts(registry, rows, timeout_s, echo)
    fetch_results(registry, rows, settings.home / "demo-reports")
    table = study_table(rows)
    echo(f"done in {time.monotonic() - t0:.0f} s")
    return table
