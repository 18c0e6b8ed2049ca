"""The embedded default end to end: ``make demo`` / ``mdgate demo``.

Starts ``mdgate serve`` (which starts MLflow and Prefect on 127.0.0.1 with SQLite) in the
background, registers the example teacher and its distilled students as versions of one
registered model (students carry ``mdgate.parent`` → the teacher), waits while the webhook
path gates each one, showing each gate's progress as the Prefect UI does
(``flows/demo_progress.py``), and prints the study's table (``flows.demo_table.render_study``, 100
columns).
The study holds two students made to show what the gate is for: one whose forces come from a
vector head instead of −dE/dR, and an early checkpoint of the smallest one
(``scripts/README.md``). The servers keep running so that the UIs can be browsed;
``mdgate demo --stop`` stops them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client

from flows.demo_progress import Board, progress_line, read_view
from flows.demo_table import WIDTH, Row, study_table
from flows.servers import is_up
from flows.settings import Settings
from mdgate.config import load_config
from mdgate.errors import ModelLoadError
from mdgate.potentials.schnetpack import load_module
from mdgate.potentials.spec import is_state_dict_model, save_state_dict_model
from registry import Registry, VersionInfo
from registry import types as T
from registry.artifacts import download, registered_metadata
from registry.register import model_sha256, register_potential

MODEL_NAME = "painn-md17"
#: (file stem in examples/models, parent stem or None) in registration order: the teacher, its
#: distilled students, a student with direct (non-conservative) forces, and the smallest
#: student's checkpoint after 1 of its 10 epochs.
STUDY = (("teacher", None), ("student_2x", "teacher"), ("student_5x", "teacher"), ("student_20x", "teacher"),
         ("student_5x_direct", "teacher"), ("student_20x_epoch1", "teacher"))
REPO = Path(__file__).resolve().parents[1]
#: Gates the demo's ``mdgate serve`` runs at a time (``MDGATE_MAX_GATES`` of the caller wins).
DEMO_MAX_GATES = 2


def demo_profile() -> Path:
    """The packaged short MD profile of the demo."""
    return Path(str(resources.files("mdgate") / "data" / "demo.yaml"))


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
    # The URLs twice: as mdgate settings, and as the libraries' own variables, so that a
    # PREFECT_API_URL / MLFLOW_TRACKING_URI of the calling environment (another server) cannot win
    # in the serve process, whatever it imports first; and the demo's model among those it gates
    # (an MDGATE_MODELS pattern of the calling environment would leave it ungated).
    env = dict(os.environ, MDGATE_CONFIG=str(config), MDGATE_HOME=str(settings.home),
               MDGATE_TRACKING_URI=settings.tracking_uri, MDGATE_PREFECT_API_URL=settings.prefect_api_url,
               MLFLOW_TRACKING_URI=settings.tracking_uri, PREFECT_API_URL=settings.prefect_api_url,
               MDGATE_MODELS=MODEL_NAME if not fnmatch.fnmatch(MODEL_NAME, settings.models) else settings.models)
    # Two gates at a time (unless the caller's environment says otherwise): on two cores the MD of
    # two gates at once took within 4 % of one after the other (README, "What the demo shows"),
    # and one gate's start, report and publish overlap another's MD.
    env.setdefault("MDGATE_MAX_GATES", str(DEMO_MAX_GATES))
    # The demo's own pickle (the direct-force student) may be loaded, in the model process.
    env.setdefault("MDGATE_ALLOW_PICKLES", MODEL_NAME)
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


def register_study(registry: Registry, models_dir: Path, echo, store: Path) -> list[Row]:
    """Register the teacher and the students once; a re-run reuses versions of the same files.

    Each model is registered weights-only (converted into ``store`` once: the gate loads it
    without running code); one the format cannot describe (the direct-force student's head) is
    registered as the pickle it is, which the demo's gate allows for its own model name
    (``MDGATE_ALLOW_PICKLES``) and evaluates in the sandboxed model process.
    """
    existing: dict[str, VersionInfo] = {}
    with contextlib.suppress(Exception):
        for v in registry.list_versions(MODEL_NAME):
            existing.setdefault(registered_metadata(registry, v).get(T.MODEL_SHA256, ""), v)
    rows: list[Row] = []
    by_stem: dict[str, VersionInfo] = {}
    for stem, parent in STUDY:
        path = models_dir / f"{stem}.pt"
        if not path.is_file():
            if parent is None:
                raise FileNotFoundError(f"{path} is missing: train it with scripts/train_models.py (scripts/README.md)")
            echo(f"  {stem}: {path} is not there (train it with scripts/train_models.py): skipped")
            continue
        path = weights_only(path, store / stem)
        sha = model_sha256(path)
        if sha in existing:
            info = existing[sha]
            echo(f"  {stem}: already registered as {MODEL_NAME} v{info.version} ({info.status or 'no status'})")
        else:
            sidecar = models_dir / f"{stem}.json"
            meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
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


def weights_only(path: Path, folder: Path) -> Path:
    """``folder`` holding ``path`` (a pickle of the project's own) as weights + spec, converted
    once; ``path`` itself when the format cannot describe the model.
    """
    if is_state_dict_model(folder):
        return folder
    try:
        save_state_dict_model(load_module(path), folder)
    except ModelLoadError:
        return path
    return folder


def wait_for_verdicts(registry: Registry, rows: list[Row], timeout_s: float,
                      steps_per_molecule: int | None = None, out=None, live: bool | None = None) -> None:
    """Poll the registry until every version has a final status, showing each gate's progress.

    The status comes from MLflow; stage, molecules done, MD steps and elapsed time of a running
    gate from the Prefect API (``flows/demo_progress.py``). ``out``/``live``: where and how the
    lines are drawn (default: stdout, redrawn in place when it is a terminal).
    """
    board = Board(out or sys.stdout, live=live, width=WIDTH)
    deadline = time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        client = _prefect_client(stack)
        while True:
            pending, lines = 0, {}
            for row in rows:
                row.version = registry.get_version(MODEL_NAME, row.version.version)
                status = row.version.status.value if row.version.status else "waiting"
                final = bool(row.version.status and row.version.status.is_final)
                view = None
                if client is not None and row.version.flow_run:
                    try:
                        view = read_view(client, MODEL_NAME, row.version.version, row.version.flow_run)
                    except Exception:  # progress is cosmetic: the status line is enough
                        view = None
                if final and view is not None:  # a finished gate: its time, not its last stage
                    view.state, view.stage, view.md_percent, view.molecules_total = "", "", None, None
                lines[row.stem] = (f"{status} {view.stage if view else ''}",
                                   progress_line(f"v{row.version.version} {row.stem}", status, view,
                                                 steps_per_molecule))
                pending += not final
            board.update(lines)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pending} versions still not gated after {timeout_s:g} s")
            time.sleep(3.0)


def _prefect_client(stack: contextlib.ExitStack) -> Any:
    """A sync Prefect client on ``PREFECT_API_URL`` (closed with ``stack``), or ``None``."""
    try:
        return stack.enter_context(get_client(sync_client=True))
    except Exception:
        return None


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


@contextlib.contextmanager
def _quiet_registration():
    """Keep the demo's output to its own lines: no MLflow run URLs, pickle warnings or INFO
    lines, and no torch deprecation warnings from loading the models (their facts are tagged).
    """
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


def steps_per_molecule(config: Path) -> int | None:
    """MD steps a gate asks per molecule under ``config``: the longer of NVE and heat stress."""
    try:
        c = load_config(config)
    except Exception:
        return None
    return max(c.md.n_steps if c.md.enabled else 0, c.stress.n_steps if c.stress.enabled else 0, 1)


def run_demo(settings: Settings, models_dir: Path | None = None, timeout_s: float = 2400.0,
             echo=print, out=None, live: bool | None = None) -> list[dict[str, str]]:
    """Run the whole demo; return the study table (:func:`study_table`; print it with
    ``flows.demo_table.render_study``). ``out``/``live``: where the progress lines go (see
    :func:`wait_for_verdicts`).
    """
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
        rows = register_study(registry, models_dir or REPO / "examples" / "models", echo,
                              settings.home / "demo-models")
    echo("waiting for the gate (webhook → Prefect flow → MLflow tags; progress from the Prefect API):")
    wait_for_verdicts(registry, rows, timeout_s, steps_per_molecule(config), out=out, live=live)
    fetch_results(registry, rows, settings.home / "demo-reports")
    table = study_table(rows)
    echo(f"done in {time.monotonic() - t0:.0f} s")
    return table
