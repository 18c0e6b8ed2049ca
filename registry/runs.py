"""The validation run of a verdict: the config as params, the figures as metrics, the report
folder as artifacts, in the connection's experiment.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

from mlflow.entities import Metric, Param

from mdgate.results import ValidationResult, Verdict
from registry import types as T
from registry.connection import Connection, experiment_id, translate_errors
from registry.errors import ArtifactStoreError, TransientRegistryError
from registry.text import gist
from registry.types import Claim

#: Params and metrics per ``log_batch`` request (MLflow's limit on params).
BATCH = 100


def log_validation_run(conn: Connection, claim: Claim, result: ValidationResult, report_dir: Path,
                       criteria_sha256: str) -> tuple[str, str, str]:
    """Log the validation run; return its id, experiment id and artifact URI.

    Raises:
        ArtifactStoreError: the report could not be stored (the run is marked FAILED).
    """
    exp_id = experiment_id(conn)
    with translate_errors("logging the validation run"):
        run = conn.mlflow.create_run(
            exp_id, run_name=f"gate/{claim.name}/v{claim.version}",
            tags={"mdgate.model": claim.name, "mdgate.version": claim.version,
                  "mdgate.verdict": result.verdict.value, "mdgate.claim": str(claim.generation),
                  "mdgate.flow_run": claim.flow_run or "", T.CRITERIA_SHA256: criteria_sha256,
                  "mlflow.note.content": result.reason},
        )
        run_id = run.info.run_id
        params = run_params(result)
        metrics = run_metrics(result)
        stamp = int(time.time() * 1000)
        for i in range(0, max(len(params), len(metrics)), BATCH):
            conn.mlflow.log_batch(
                run_id, params=[Param(k, v) for k, v in params[i:i + BATCH]],
                metrics=[Metric(k, v, stamp, 0) for k, v in metrics[i:i + BATCH]],
            )
    try:
        with translate_errors("storing the report in the artifact store"):
            conn.mlflow.log_artifacts(run_id, str(report_dir))
    except TransientRegistryError as e:
        with contextlib.suppress(Exception):
            conn.mlflow.set_terminated(run_id, "FAILED")
        raise ArtifactStoreError(f"storing the report in the artifact store: {gist(str(e.__cause__ or e))}") \
            from e.__cause__
    with translate_errors("logging the validation run"):
        conn.mlflow.set_terminated(run_id, "FINISHED" if result.verdict != Verdict.ERROR else "FAILED")
    return run_id, exp_id, run.info.artifact_uri


def run_params(result: ValidationResult) -> list[tuple[str, str]]:
    """The config as applied, flattened (``md.n_steps``, ``criteria.min_force_r2.bound``, ...)."""
    out: list[tuple[str, str]] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out.append((prefix, str(value)[:6000]))

    walk("", result.criteria.get("config", {}))
    out.append(("criteria_sha256", str(result.criteria.get("sha256", ""))))
    out.append(("model.n_parameters", str(result.model.n_parameters)))
    out.append(("model.parent", str(result.model.parent)))
    return out


def _metric_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)


def run_metrics(result: ValidationResult) -> list[tuple[str, float]]:
    """Per-molecule summary figures (``<molecule>/<metric>``), accuracy and timing, finite only."""
    out: list[tuple[str, float]] = []

    def add(key: str, value: object) -> None:
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out.append((_metric_key(key), float(value)))

    for mol in result.molecules:
        for key, value in mol.summary.items():
            add(f"{mol.name}/{key}", value)
        add(f"{mol.name}/steps_done", min((r.steps_done for r in mol.replicas), default=0))
        add(f"{mol.name}/passed", mol.passed)
    acc = result.accuracy
    if acc is not None:
        for key in ("force_r2", "force_mae_eV_per_A", "force_rmse_eV_per_A", "energy_mae_meV_per_atom"):
            add(f"accuracy/{key}", getattr(acc, key))
        for name, values in acc.per_molecule.items():
            for key, value in values.items():
                add(f"accuracy/{name}/{key}", value)
    t = result.timing
    for key in ("total_s", "md_s", "accuracy_s", "ms_per_step", "atom_steps_per_s"):
        add(f"timing/{key}", getattr(t, key))
    add("model/n_parameters", result.model.n_parameters)
    add("model/compression_ratio", result.model.compression_ratio)
    return out
