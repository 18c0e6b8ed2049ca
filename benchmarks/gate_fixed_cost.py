"""What a served gate costs outside its protocol's computation, and where it goes.

    .venv/bin/python benchmarks/gate_fixed_cost.py [--model examples/models/student_20x.pt] [--gates 3]
        [--out benchmarks/results]

Starts ``mdgate serve`` (MLflow and Prefect on free ports of 127.0.0.1, SQLite, a temporary
``MDGATE_HOME``) the way ``make demo`` does, registers ``--model`` ``--gates`` times, one version
at a time (each gated alone, nothing queued), with a protocol shortened to a few steps per
stage, and times each gate from the registration call's return to the final status in MLflow.
The Prefect API gives each task run's span (claim, fetch, load, sanity, md-*, accuracy, oracle,
report, publish); the protocol's computation is the union of the sanity, MD, accuracy and oracle
spans, and the fixed cost is the rest:

    fixed cost = (final status − registration) − computation

split into start-up (registration → the flow run Running: webhook, queue poll, process start,
imports), the registry and engine tasks, and what lies between tasks (flow code, Prefect
artifacts, notification). Prints a Markdown table and, last, one JSON object; writes both to
``--out`` (``gate_fixed_cost_cpu.md`` / ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

#: A protocol of a few steps per stage: every stage runs, none computes for long.
SHORT = {"md": {"n_steps": 20, "n_replicas": 1}, "stress": {"ramp_ps": 0.005, "hold_ps": 0.005},
         "oracle": {"frames_per_trajectory": 1}, "sanity": {"relax_steps": 0}}
#: Task runs whose time is the protocol's computation (``md-<molecule>`` by prefix).
COMPUTE = ("sanity", "accuracy", "oracle")


def union_s(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of ``(start, end)`` spans."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def gate_timeline(prefect_api_url: str, flow_run_id: str) -> dict:
    """Start, end and each task run's ``(name, start, end)`` (epoch seconds) of one flow run."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.demo_progress import task_stage

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    spans = [(task_stage(t.name), t.start_time.timestamp(), t.end_time.timestamp())
             for t in tasks if t.start_time is not None and t.end_time is not None]
    return {"start": run.start_time.timestamp() if run.start_time else None,
            "end": run.end_time.timestamp() if run.end_time else None, "tasks": spans}


def breakdown(t_registered: float, t_final: float, timeline: dict) -> dict:
    """The gate's wall time split into start-up, tasks, computation and the rest."""
    tasks = timeline["tasks"]
    compute = union_s([(a, b) for n, a, b in tasks if n == "md" or n in COMPUTE])
    per_task: dict[str, float] = {}
    for name, a, b in tasks:
        if name == "md" or name in COMPUTE:
            continue
        per_task[name] = per_task.get(name, 0.0) + (b - a)
    wall = t_final - t_registered
    startup = (timeline["start"] or t_final) - t_registered
    return {"wall_s": wall, "compute_s": compute, "fixed_s": wall - compute, "startup_s": startup,
            **{f"{k}_s": v for k, v in per_task.items()},
            "between_tasks_s": wall - startup - compute - sum(per_task.values())}


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "examples" / "models" / "student_20x.pt")
    ap.add_argument("--gates", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    print(json.dumps(measure(args.model, args.gates, args.timeout_s, args.out)))


def measure(model: Path, gates: int, timeout_s: float = 600.0, out: Path | None = None) -> dict:
    """Serve, gate ``model`` ``gates`` times, return the summary (and write the table to ``out``)."""
    import yaml

    from flows.servers import free_port

    home = Path(tempfile.mkdtemp(prefix="mdgate-fixed-cost-"))
    config = home / "short.yaml"
    config.write_text(yaml.safe_dump(SHORT))
    tracking, prefect = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}/api"
    os.environ.update({"MLFLOW_TRACKING_URI": tracking, "PREFECT_API_URL": prefect, "MDGATE_HOME": str(home),
                       "MDGATE_CONFIG": str(config), "MDGATE_TRACKING_URI": tracking,
                       "MDGATE_PREFECT_API_URL": prefect, "MDGATE_WEBHOOK_PORT": str(free_port())})
    from flows.demo import MODEL_NAME, start_serve, stop_serve
    from flows.settings import load_settings
    from registry import Registry
    from registry.register import register_potential

    settings = load_settings()
    settings.export_env()
    t0 = time.perf_counter()
    start_serve(settings, config)
    serve_s = time.perf_counter() - t0
    registry = Registry(settings.tracking_uri, settings.experiment)
    sidecar = model.with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    meta = {k: meta[k] for k in ("level_of_theory", "energy_unit", "position_unit", "energy_key", "forces_key",
                                 "cutoff_A") if meta.get(k) is not None}
    rows, timelines = [], []
    try:
        for _ in range(gates):
            version = register_potential(registry, model, MODEL_NAME, meta=meta)
            # The webhook fires when the version is created, inside the registration call.
            t_reg = version.created_at.timestamp() if version.created_at else time.time()
            deadline = t_reg + timeout_s
            while True:
                info = registry.get_version(MODEL_NAME, version.version)
                if info.status is not None and info.status.is_final:
                    t_final = time.time()
                    break
                if time.time() > deadline:
                    raise TimeoutError(f"version {version.version} not gated after {timeout_s:g} s")
                time.sleep(0.1)
            timeline = gate_timeline(settings.prefect_api_url, info.flow_run)
            row = {"version": version.version, "status": info.status.value, "reason": info.reason,
                   **breakdown(t_reg, t_final, timeline)}
            timelines.append({"version": version.version, "running_s": (timeline["start"] or t_reg) - t_reg,
                              "final_s": t_final - t_reg,
                              "tasks": [(n, round(a - t_reg, 2), round(b - t_reg, 2))
                                        for n, a, b in sorted(timeline["tasks"], key=lambda x: x[1])]})
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        stop_serve(settings)
    keys = [k for k in rows[0] if k.endswith("_s")]
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}
    lines = [f"One served gate outside its protocol's computation: {model.name}, {gates} gates one at a time, "
             f"short protocol (x86_64, {os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.1f} at "
             f"the end; `mdgate serve` ready in {serve_s:.1f} s)", "",
             "| gate | status | " + " | ".join(k.removesuffix("_s") + " s" for k in keys) + " |",
             "|---|---|" + "---:|" * len(keys)]
    for r in rows:
        lines.append(f"| v{r['version']} | {r['status']} | " + " | ".join(f"{r.get(k, 0.0):.2f}" for k in keys) + " |")
    lines.append("| median | | " + " | ".join(f"{med[k]:.2f}" for k in keys) + " |")
    table = "\n".join(lines)
    print(table)
    summary = {"model": model.name, "gates": gates, "gate_fixed_cost_s": med["fixed_s"],
               "startup_s": med["startup_s"], "median": med,
               "device": f"{platform.machine()} CPU, {os.cpu_count()} cores"}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gate_fixed_cost_cpu.md").write_text(table + "\n")
        record = {"rows": rows, **summary, "timelines": timelines}
        (out / "gate_fixed_cost_cpu.json").write_text(json.dumps(record, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
