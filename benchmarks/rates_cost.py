"""What deciding on failure rates costs: time to verdict of the demo's versions, before and after.

    .venv/bin/python benchmarks/rates_cost.py [--models teacher student_2x ...] [--config demo|default]
        [--threads 2] [--out benchmarks/results]

For each model of the demo's study (``examples/models/<name>.pt`` with its JSON metadata), on the
packaged molecules under the demo's MD profile (``mdgate/data/demo.yaml``; ``--config default``:
the default protocol), in one run, the two variants alternating (which goes first alternates by
model, so a drift of the machine's speed does not favour one):

* ``before``: any failing trajectory fails its molecule, structural checks at the first record
  (``rates.enabled: false``, ``stress.hold_fs: 0``), as the gate decided until now;
* ``after``: the defaults: failure rates with confirmation replicas, held structural checks.

Prints a Markdown table (verdict, deciding check, seconds, trajectories run, ratio after/before)
and writes it with a JSON copy to ``benchmarks/results/rates_cost_<config>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from mdgate.config import load_config, parse_config  # noqa: E402
from mdgate.potentials import ModelMeta  # noqa: E402
from mdgate.results import ValidationResult  # noqa: E402
from mdgate.runner import configure_threads, validate  # noqa: E402

STUDY = ["teacher", "student_2x", "student_5x", "student_20x", "student_5x_direct", "student_20x_epoch1"]
BEFORE = {"rates": {"enabled": False}, "stress": {"hold_fs": 0.0}}


def trajectories(result: ValidationResult) -> int:
    """MD trajectories the validation ran (NVE and stress, confirmation replicas included)."""
    stress = result.stages.get("stress")
    return sum(len(m.replicas) for m in result.molecules) + sum(
        len(m.replicas) for m in (stress.molecules if stress is not None else []))


def run(model: str, variant: str, base: dict, threads: int) -> dict:
    """One validation of ``model`` under ``variant``; its verdict, time and trajectories."""
    path = ROOT / "examples" / "models" / f"{model}.pt"
    meta = ModelMeta.model_validate(json.loads(path.with_suffix(".json").read_text()))
    data = json.loads(json.dumps(base))
    for key, value in (BEFORE if variant == "before" else {}).items():
        data[key] = {**data.get(key, {}), **value}
    data["md"] = {**data.get("md", {}), "device": "cpu", "threads": threads}
    config = parse_config(data)
    t = time.perf_counter()
    result = validate(path, config, meta)
    seconds = time.perf_counter() - t
    print(f"{model} {variant}: {seconds:.1f} s, {result.verdict.value} {result.decided_by or ''}",
          file=sys.stderr, flush=True)
    return {"verdict": result.verdict.value, "decided_by": result.decided_by, "seconds": round(seconds, 1),
            "trajectories": trajectories(result), "reason": result.reason}


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=STUDY)
    ap.add_argument("--config", choices=["demo", "default"], default="demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    configure_threads(args.threads)
    base = {} if args.config == "default" else load_config(ROOT / "mdgate" / "data" / "demo.yaml").model_dump(
        mode="json", exclude_defaults=True)
    rows = []
    for k, model in enumerate(args.models):
        order = ("before", "after") if k % 2 == 0 else ("after", "before")
        got = {v: run(model, v, base, args.threads) for v in order}
        rows.append({"model": model, **{v: got[v] for v in ("before", "after")},
                     "ratio": round(got["after"]["seconds"] / got["before"]["seconds"], 3)})
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"Time to verdict, before and after failure rates ({args.config} profile, packaged molecules; {stamp}, "
            f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads, CPU; "
            f"`benchmarks/rates_cost.py --config {args.config}`; 1-min load average at the end "
            f"{os.getloadavg()[0]:.1f})")
    lines = [head, "", "| model | verdict before | verdict after | deciding check after | trajectories before → after "
             "| seconds before | seconds after | after / before |", "|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {r['model']} | {b['verdict']} | {a['verdict']} | {a['decided_by'] or '-'} "
                     f"| {b['trajectories']} → {a['trajectories']} | {b['seconds']:.1f} | {a['seconds']:.1f} "
                     f"| {r['ratio']:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rates_cost_{args.config}.md").write_text(table)
    (args.out / f"rates_cost_{args.config}.json").write_text(json.dumps(
        {"date": stamp, "machine": f"{platform.machine()}, {os.cpu_count()} cores", "config": args.config,
         "threads": args.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
