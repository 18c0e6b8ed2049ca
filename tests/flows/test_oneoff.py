"""One-off gating with an MLflow server and no Prefect server: ``mdgate gate NAME VERSION`` runs the
gate flow in its own process with Prefect's temporary local server.

The command runs as a subprocess, as a user runs it: a fresh process where prefect reads its
settings from the environment, with no ``PREFECT_API_URL`` that answers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from flows.servers import free_port
from mdgate.config import load_config
from registry import Registry, Status
from registry import figures as F
from registry import types as T
from registry.artifacts import registered_metadata
from registry.register import register_potential
from tests.integration import REPO_ROOT, MlflowOnly, ModelFile, record_timing

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def mdgate_gate(mlflow: MlflowOnly, config: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """``mdgate gate ARGS`` against ``mlflow``, with a Prefect API URL where nothing listens."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MDGATE_", "MLFLOW_TRACKING_URI"))}
    env.update({
        "MLFLOW_TRACKING_URI": mlflow.tracking_uri, "MDGATE_PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "MDGATE_CONFIG": str(config), "MDGATE_HOME": str(mlflow.home / "mdgate"),
        "PREFECT_HOME": str(mlflow.home / "prefect-home"), "PYTHONPATH": str(REPO_ROOT),
        "MDGATE_CORES": "2", "MDGATE_MD_PARALLEL": "2", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MDGATE_ALLOW_PICKLES": "oneoff-*",  # the test models are torch.save pickles
    })
    t0 = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).parent / "mdgate"), "gate", *args], env=env,
                          capture_output=True, text=True, timeout=900, cwd=mlflow.home)
    return done, time.monotonic() - t0


def results_json(registry: Registry, run_id: str, tmp_path: Path) -> dict[str, Any]:
    local = registry.client.download_artifacts(run_id, "results.json", str(tmp_path))
    return json.loads(Path(local).read_text())


def test_gate_without_prefect_server(mlflow_only: MlflowOnly, gate_config: Path, good_model: ModelFile,
                                     bad_model: ModelFile, small_set: Any, tmp_path: Path) -> None:
    registry = Registry(mlflow_only.tracking_uri)
    name = f"oneoff-{uuid.uuid4().hex[:6]}"
    good = register_potential(registry, good_model.path, name, meta=good_model.meta, reference=small_set.reference)
    bad = register_potential(registry, bad_model.path, name, parent=f"{name}/{good.version}", meta=bad_model.meta,
                             reference=small_set.reference)

    # --server: a Prefect server is required, and none answers
    done, _ = mdgate_gate(mlflow_only, gate_config, name, good.version, "--server")
    assert done.returncode == 2 and "does not answer" in done.stderr and "--server" in done.stderr, done.stderr
    assert registry.get_version(name, good.version).status == Status.PENDING

    # no Prefect API answers: the gate runs in the process, with Prefect's temporary server
    done, seconds = mdgate_gate(mlflow_only, gate_config, name, good.version)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "temporary local server (no Prefect API answers" in done.stderr
    assert done.stdout.splitlines()[-1].startswith("Approved:"), done.stdout
    record_timing("oneoff_gate_local_approved_s", seconds)
    # --local: the same, chosen explicitly
    done, seconds = mdgate_gate(mlflow_only, gate_config, name, bad.version, "--local")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "temporary local server (--local)" in done.stderr and done.stdout.splitlines()[-1].startswith("Rejected:")
    record_timing("oneoff_gate_local_rejected_s", seconds)

    sha = load_config(gate_config).sha256()
    info_good, info_bad = registry.get_version(name, good.version), registry.get_version(name, bad.version)
    assert info_good.status == Status.APPROVED, info_good.reason
    assert info_bad.status == Status.REJECTED, info_bad.reason
    assert registry.alias_version(name) == good.version
    for info in (info_good, info_bad):
        assert info.criteria_sha256 == sha and info.flow_run and info.claim == 1
        assert info.report and info.report.endswith("/report.md")
        stored = {a.path for a in registry.client.list_artifacts(info.validation_run)}
        assert {"report.md", "report.html", "results.json"} <= stored
        assert f"mdgate verdict: {info.status.value}" in info.description

    # the searchable figures of each verdict
    res_good = results_json(registry, info_good.validation_run, tmp_path / "good")
    res_bad = results_json(registry, info_bad.validation_run, tmp_path / "bad")
    figures = registry.figures(name)
    good_f = figures[info_good.version]
    assert good_f[F.FORCE_R2] >= 0.9
    assert good_f[F.FORCE_R2] == pytest.approx(res_good["accuracy"]["force_r2"], rel=1e-12)
    assert good_f[F.N_PARAMETERS] == res_good["model"]["n_parameters"] and T.DECIDED_BY not in info_good.tags
    assert good_f[F.WORST_DRIFT] >= 0
    assert good_f[F.MIN_TIME_TO_FAILURE] == pytest.approx(0.1)  # QUICK_STAGES: 0.05 + 0.05 ps, no replica failed
    oracle = res_good["stages"].get("oracle") or {}
    assert (F.ORACLE_FORCE_R2 in good_f) == bool(oracle.get("ran") and "all" in oracle.get("per_molecule", {}))
    assert info_bad.tags[T.DECIDED_BY] == res_bad["decided_by"] and "/" in res_bad["decided_by"]
    assert registered_metadata(registry, info_bad)[T.PARENT] == f"{name}/{good.version}"

    # Prefect's temporary server recorded the flow runs, with the states named after the verdicts
    db = mlflow_only.home / "mdgate" / "prefect-local.db"
    with sqlite3.connect(db) as conn:
        runs = dict(conn.execute("SELECT name, state_name FROM flow_run WHERE name LIKE ?", (f"gate/{name}/%",)))
    assert runs == {f"gate/{name}/v{good.version}": "Approved", f"gate/{name}/v{bad.version}": "Rejected"}
    assert info_good.flow_run and info_bad.flow_run
