"""Per-step overhead of the model process: the same model evaluated in the engine's process and
in a (sandboxed) model process, in one run.

    .venv/bin/python benchmarks/model_process.py [--steps 100] [--reps 5] [--threads 1]

For each model (the 590K-parameter teacher and the 20x student, ``examples/models``), loaded once
in-process (``model_process=never``) and once in a model process (``always``), the engine's NVE
(``mdgate.md.run_nve``) runs every packaged molecule in one batch, as a gate lane does: one
request per step. The two are timed in alternation, ``--reps`` pairs after a warm-up, and the
ratio model process / in-process is taken pair by pair (the machine's speed drifts; pairs do
not). Reported: ms per step (median), the median ratio, and the model process's start-up time.
Writes ``benchmarks/results/model_process_cpu.{json,md}`` and prints the JSON as its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from mdgate.md.batch import run_nve  # noqa: E402
from mdgate.molecules import read_molecules  # noqa: E402
from mdgate.potentials import Potential, load  # noqa: E402
from mdgate.potentials.isolation import Isolation  # noqa: E402

MODELS = {"teacher": ROOT / "examples" / "models" / "teacher.pt",
          "student_20x": ROOT / "examples" / "models" / "student_20x.pt"}
GOALS = {"teacher": 1.10, "student_20x": 1.30}


def seconds(potential: Potential, n_steps: int) -> float:
    """Wall time of ``n_steps`` NVE steps of every packaged molecule in one batch."""
    molecules = read_molecules()
    t0 = time.perf_counter()
    runs = run_nve(potential, molecules, n_steps=n_steps, timestep_fs=0.5, temperature_K=300.0)
    elapsed = time.perf_counter() - t0
    assert all(r.steps_done == n_steps for r in runs)
    return elapsed


def measure(path: Path, n_steps: int, reps: int) -> dict[str, float]:
    """Both paths of one model, alternated."""
    local = load(path, "cpu", isolation=Isolation(allow_pickles=True, model_process="never"))
    t0 = time.perf_counter()
    remote = load(path, "cpu", isolation=Isolation(allow_pickles=True, model_process="always"))
    startup_s = time.perf_counter() - t0
    for p in (local, remote):
        seconds(p, 5)  # warm-up
    ratios, t_local, t_remote = [], [], []
    for _ in range(reps):
        a, b = seconds(local, n_steps), seconds(remote, n_steps)
        t_local.append(a)
        t_remote.append(b)
        ratios.append(b / a)
    remote.close()  # type: ignore[attr-defined]
    return {"n_parameters": local.n_parameters,
            "in_process_ms_per_step": round(statistics.median(t_local) / n_steps * 1000, 3),
            "model_process_ms_per_step": round(statistics.median(t_remote) / n_steps * 1000, 3),
            "ratio": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
            "startup_s": round(startup_s, 2),
            "sandbox": remote.sandbox}  # type: ignore[attr-defined]


def main() -> None:
    """Measure both models and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    molecules = read_molecules()
    n_atoms = sum(len(m.atoms) for m in molecules)
    figures = {name: measure(path, args.steps, args.reps) for name, path in MODELS.items()}
    result = {
        "benchmark": "model_process", "command": " ".join(["benchmarks/model_process.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        "torch": torch.__version__, "device": "cpu", "steps": args.steps, "reps": args.reps,
        "molecules": len(molecules), "atoms": n_atoms, "models": figures,
        "goals": GOALS,
    }
    lines = [f"Model process against in-process, {len(molecules)} molecules ({n_atoms} atoms) in one batch, "
             f"{args.steps} NVE steps × {args.reps} alternated pairs, {args.threads} thread(s), CPU "
             f"({result['date']}, `{result['command']}`).", "",
             "| model | parameters | in-process ms/step | model process ms/step | ratio (median of pairs) | goal | "
             "start-up s |", "|---|---|---|---|---|---|---|"]
    for name, f in figures.items():
        lines.append(f"| {name} | {f['n_parameters']:,} | {f['in_process_ms_per_step']:.2f} | "
                     f"{f['model_process_ms_per_step']:.2f} | {f['ratio']:.3f} | ≤ {GOALS[name]:.2f} | "
                     f"{f['startup_s']:.1f} |")
    lines += ["", f"Model process: {figures['teacher']['sandbox']}."]
    out = ROOT / "benchmarks" / "results"
    (out / "model_process_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "model_process_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
