"""ANI-1x per MD step: the batched adapter (one torch call for all molecules) against the ASE
adapter (torchani's calculator, one call per molecule), in one run.

    .venv/bin/python benchmarks/ani_speed.py [--steps 20] [--reps 3] [--threads 1] [--device cpu]

Both load from the example descriptors (``examples/ani1x/mdgate.yaml`` and ``ase.yaml``: the
8-network ensemble in float64) and run the mdgate engine (``mdgate.md.run_nve``) on the packaged
molecules, one replica each, all in one batch. Reported: ms per MD step (median over ``--reps``,
after a warm-up run), and the ratio ASE / batched. Prints a Markdown table and, as its last line,
one JSON object. Needs ``mdgate[ani]``.
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

EXAMPLE = ROOT / "examples" / "ani1x"


def ms_per_step(potential: Potential, n_steps: int, reps: int) -> float:
    """Median wall time of one MD step of every packaged molecule, in ms (warm-up excluded)."""
    molecules = read_molecules()
    run_nve(potential, molecules, n_steps=2, timestep_fs=0.5, temperature_K=300.0)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runs = run_nve(potential, molecules, n_steps=n_steps, timestep_fs=0.5, temperature_K=300.0)
        times.append((time.perf_counter() - t0) / n_steps * 1000)
        assert all(r.steps_done == n_steps for r in runs)
    return statistics.median(times)


def main() -> None:
    """Measure both paths and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    molecules = read_molecules()
    batched = ms_per_step(load(EXAMPLE, device=args.device), args.steps, args.reps)
    per_molecule = ms_per_step(load(EXAMPLE / "ase.yaml", device=args.device), args.steps, args.reps)
    n_atoms = sum(len(m.atoms) for m in molecules)
    print(f"ANI-1x (8 networks, float64), {len(molecules)} molecules ({n_atoms} atoms), {args.steps} steps, "
          f"{args.threads} thread(s), {args.device}")
    print("| path | ms per MD step |\n|---|---|")
    print(f"| batched (framework: ani, one call) | {batched:.1f} |")
    print(f"| ASE calculator (framework: ase, one call per molecule) | {per_molecule:.1f} |")
    print(f"speed-up of the batched path: {per_molecule / batched:.2f}x")
    print(json.dumps({
        "benchmark": "ani_speed", "command": " ".join(["benchmarks/ani_speed.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "device": args.device, "threads": args.threads, "steps": args.steps,
        "reps": args.reps, "molecules": len(molecules), "atoms": n_atoms,
        "batched_ms_per_step": round(batched, 2), "ase_ms_per_step": round(per_molecule, 2),
        "speedup": round(per_molecule / batched, 2),
    }))


if __name__ == "__main__":
    main()
