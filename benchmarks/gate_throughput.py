"""Per-molecule MD time of one gate with the default criteria, for the throughput model of
deployments/README.md.

    .venv/bin/python benchmarks/gate_throughput.py [--model examples/models/painn_small.pt]
        [--steps 4000] [--threads 1] [--device cpu] [--out benchmarks/results]

Measures what a gate spends outside the registry, on this machine: loading the model, the MD of
each molecule of the packaged set alone (as one per-molecule task of the gate runs it: all its
replicas batched, fail-fast on, an approving model runs every step), the accuracy on the packaged
reference set. Prints a Markdown table and writes it with a JSON copy to ``--out``
(``gate_throughput_<device>.md`` / ``.json``).

On a shared machine the wall time includes waiting for other people's work (the load average is
recorded); the CPU time of this process (one torch thread) is what the same MD costs on a core of
its own, and is the figure to scale from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from mdgate.config import GateConfig  # noqa: E402
from mdgate.potentials import ModelMeta  # noqa: E402
from mdgate.runner import configure_threads, load_inputs  # noqa: E402
from mdgate.stages.accuracy import run_accuracy  # noqa: E402
from mdgate.stages.md import run_md  # noqa: E402


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "examples" / "models" / "painn_small.pt")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    configure_threads(args.threads)
    sidecar = args.model.with_suffix(".json")
    meta = ModelMeta.model_validate(json.loads(sidecar.read_text())) if sidecar.is_file() else ModelMeta()
    # The NVE stage alone, one replica per molecule: the figure deployments/README.md scales from
    # (benchmarks/protocol_time.py measures the whole default protocol).
    config = GateConfig.model_validate({"md": {"n_steps": args.steps, "device": args.device, "n_replicas": 1,
                                               "threads": args.threads},
                                        "sanity": {"enabled": False}, "stress": {"enabled": False},
                                        "oracle": {"enabled": False}})
    load_avg = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    inputs = load_inputs(args.model, config, meta, args.device)
    load_s = time.perf_counter() - t0
    rows = []
    for mol in inputs.molecules:
        t, cpu = time.perf_counter(), time.process_time()
        [run] = run_md(inputs.potential, [mol], config)
        res = run.nve
        seconds, cpu_s = time.perf_counter() - t, time.process_time() - cpu
        steps = min(r.steps_done for r in res.replicas)
        atom_steps = sum(r.steps_done for r in res.replicas) * res.n_atoms
        rows.append({"molecule": mol.name, "atoms": res.n_atoms, "steps": steps, "passed": res.passed,
                     "seconds": round(seconds, 2), "cpu_s": round(cpu_s, 2),
                     "atom_steps_per_s": round(atom_steps / seconds),
                     "atom_steps_per_cpu_s": round(atom_steps / cpu_s),
                     "cpu_ms_per_step": round(cpu_s / max(steps, 1) * 1000, 3)})
        load_avg.append(os.getloadavg()[0])
        print(f"{mol.name}: {res.n_atoms} atoms, {steps} steps, {seconds:.1f} s ({cpu_s:.1f} s CPU)",
              file=sys.stderr, flush=True)
    t = time.perf_counter()
    acc = None
    if inputs.reference is not None:
        acc = run_accuracy(inputs.potential, inputs.reference, config, meta.level_of_theory)
    acc_s = time.perf_counter() - t
    md_total = sum(r["seconds"] for r in rows)
    cpu_total = sum(r["cpu_s"] for r in rows)
    atom_steps = sum(r["atoms"] * r["steps"] for r in rows) * config.md.n_replicas
    result = {
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "n_parameters": inputs.potential.n_parameters, "device": str(inputs.potential.device),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "n_steps": args.steps, "n_replicas": config.md.n_replicas,
        "load_s": round(load_s, 2), "accuracy_s": round(acc_s, 2),
        "accuracy_frames": acc.n_frames if acc else 0,
        "md_total_s": round(md_total, 1), "md_total_cpu_s": round(cpu_total, 1), "atom_steps": atom_steps,
        "atom_steps_per_s": round(atom_steps / md_total), "atom_steps_per_cpu_s": round(atom_steps / cpu_total),
        "load_average_1min": [round(x, 2) for x in load_avg],
        "molecules": rows,
    }
    lines = [
        f"Per-molecule MD of one gate, default criteria ({args.steps} steps × {config.md.n_replicas} "
        f"replica, 0.5 fs), {result['model']} ({result['n_parameters']:,} parameters), {result['device']}, "
        f"{result['threads']} torch thread(s), {result['cores']} cores, 1-min load average "
        f"{min(load_avg):.1f}–{max(load_avg):.1f} during the run (shared machine)",
        "",
        "| molecule | atoms | steps | wall s | CPU s | CPU ms/step | atom-steps per CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['molecule']} | {r['atoms']} | {r['steps']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['cpu_ms_per_step']:.2f} | {r['atom_steps_per_cpu_s']:,} |")
    lines += [
        f"| **all {len(rows)}** | {sum(r['atoms'] for r in rows)} | | **{md_total:.1f}** | **{cpu_total:.1f}** | | "
        f"**{result['atom_steps_per_cpu_s']:,}** |",
        "",
        f"Model load and check: {load_s:.2f} s. Accuracy on the reference set ({result['accuracy_frames']} "
        f"frames): {acc_s:.2f} s.",
    ]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gate_throughput_{result['device'].split(':')[0]}"
    (args.out / f"{stem}.md").write_text(table + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
