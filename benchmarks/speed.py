"""The speed of the gate in one run, side by side: MD throughput (A/B/C/D), threads against
worker processes for one gate, a served gate's fixed cost, and the default protocol's time to
verdict per model size.

    .venv/bin/python benchmarks/speed.py [--device cpu|cuda] [--quick] [--out benchmarks/results]

Runs, one after the other on an otherwise idle machine (each in its own process, so that one
part's threads and caches do not bias the next):

1. ``md_throughput.py``: A the ASE loop, B ``schnetpack.md``, C the engine, D the bare model
   (``md_throughput_<device>.md``);
2. ``md_processes.py``: one gate's MD with its per-molecule tasks as threads against worker
   processes, the ceiling of that ratio (one lane), and worker processes running one batch per
   lane (the default gate), on the packaged set: the demo's teacher
   (``md_processes_cpu.md``) and the 29K student (``md_processes_cpu_student_20x.md``; CPU only);
3. ``gate_fixed_cost.py``: a served gate's wall time outside its protocol's computation, from
   registration to the status in MLflow (CPU only; ``gate_fixed_cost_cpu.md``);
4. ``protocol_time.py --variants protocol``: the whole default protocol's time to verdict on
   three molecules, per model size (the 29K student and the 589K teacher;
   ``protocol_time_cpu.md``).

``--quick`` shortens each part (fewer steps and repetitions) for a look, not for figures. The
last line is one JSON object: the keys of ``md_throughput.py`` plus ``processes_vs_threads``
(one gate's MD time with threads over with processes, the processes' start-up included; for the
teacher, and ``processes_vs_threads_small`` for the 29K student, each with its ``_ceiling``;
``gate_md_vs_threads`` and ``gate_md_vs_threads_small``: the same threads over the default gate's
worker processes with lanes),
``gate_fixed_cost_s`` and ``protocol_time_to_verdict_s`` (per model); the whole is also written
to ``speed_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def run_part(script: str, args: list[str]) -> dict:
    """Run ``benchmarks/<script>`` with ``args``, its output passed through; return its last JSON line."""
    cmd = [sys.executable, str(HERE / script), *args]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    print(proc.stdout, end="", flush=True)
    print(f"=== {script}: {time.perf_counter() - t0:.0f} s", flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def main() -> None:
    """Run every part and print the combined JSON last."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="short runs: for a look, not for figures")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    out = ["--out", str(args.out)]
    quick = args.quick
    t0 = time.perf_counter()
    summary = run_part("md_throughput.py", ["--device", args.device, *out,
                                            *(["--steps", "20", "--reps", "1", "--skip-spk-md"] if quick else [])])
    if args.device == "cpu":
        steps = ["--steps", "100"] if quick else []
        procs = run_part("md_processes.py", [*out, *steps])
        summary["processes_vs_threads"] = procs["processes_vs_threads"]
        summary["processes_vs_threads_ceiling"] = procs.get("processes_vs_threads_ceiling")
        summary["gate_md_vs_threads"] = procs.get("lanes_processes_vs_threads")
        small = run_part("md_processes.py", [*out, *steps, "--model", str(ROOT / "examples/models/student_20x.pt")])
        summary["processes_vs_threads_small"] = small["processes_vs_threads"]
        summary["processes_vs_threads_small_ceiling"] = small.get("processes_vs_threads_ceiling")
        summary["gate_md_vs_threads_small"] = small.get("lanes_processes_vs_threads")
        fixed = run_part("gate_fixed_cost.py", [*out, "--gates", "1" if quick else "5"])
        summary["gate_fixed_cost_s"] = fixed["gate_fixed_cost_s"]
        summary["gate_fixed_cost_parts_s"] = {k.removesuffix("_s"): round(v, 2) for k, v in fixed["median"].items()
                                              if k not in ("wall_s", "compute_s", "fixed_s")}
    models = ["student_20x"] if quick else ["student_20x", "teacher"]
    molecules = ["ethanol"] if quick else ["aspirin", "paracetamol", "caffeine"]
    protocol = run_part("protocol_time.py", ["--variants", "protocol", "--models", *models,
                                             "--molecules", *molecules, *out])
    summary["protocol_time_to_verdict_s"] = protocol["protocol_time_to_verdict_s"]
    summary["benchmark_wall_s"] = round(time.perf_counter() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"speed_{args.device.split(':')[0]}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
