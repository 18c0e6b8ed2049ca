"""The engine's overhead over the bare model, for a TorchSim-wrapped model and for an ASE
calculator, in one run: SevenNet-0 (``sevenn==0.13.0``, float32) both ways.

    .venv/bin/python benchmarks/engine_overhead.py [--steps 50] [--reps 5] [--threads 1]

The script builds (once) and re-runs itself in SevenNet's environment (``sevenn``,
``torch-sim-atomistic``; ``mdgate.potentials.environments``) and measures, on the packaged
molecules (one replica each), ms per MD step of every molecule:

- **ASE, bare**: ASE's own ``VelocityVerlet`` with sevenn's ``SevenNetCalculator``, molecule by
  molecule (the sum over molecules is one step of all);
- **ASE, engine**: ``mdgate.md.run_nve`` through the ASE adapter (one calculator call per molecule);
- **TorchSim, bare**: the model alone: one ``SevenNetModel(state)`` call on the whole batch per
  step, and a velocity-Verlet update in torch;
- **TorchSim, engine**: ``mdgate.md.run_nve`` through the TorchSim adapter (one call per step).

Pairs alternate (bare, engine) and each ratio engine / bare is the median over ``--reps`` pairs
(the machine's speed drifts between runs; a pair does not). The adapters run in this process (the
gate puts them in a model process; ``benchmarks/model_process.py`` measures that). Prints a
Markdown table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
ASE_EXAMPLE, TORCHSIM_EXAMPLE = ROOT / "examples" / "sevennet0", ROOT / "examples" / "sevennet0-torchsim"
TIMESTEP_FS = 0.5


def in_sevennet_environment() -> None:
    """Re-run this script in the environment of the TorchSim example unless it is already there."""
    try:
        import sevenn  # noqa: F401
        import torch_sim  # noqa: F401
    except ImportError:
        from mdgate.potentials.describe import resolve
        from mdgate.potentials.environments import environment

        python, _ = environment(resolve(TORCHSIM_EXAMPLE).requirements, log=lambda line: None)
        os.execv(str(python), [str(python), *sys.argv])


def ase_bare(calculator, molecules, n_steps: int) -> Callable[[], None]:
    """ASE's VelocityVerlet on each molecule in turn."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    def run() -> None:
        for m in molecules:
            atoms = m.atoms.copy()
            atoms.calc = calculator
            MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=__import__("numpy").random.default_rng(0))
            VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs).run(n_steps)
    return run


def torchsim_bare(model, molecules, n_steps: int) -> Callable[[], None]:
    """The TorchSim model alone on the batch, integrated by a plain velocity Verlet in torch."""
    import numpy as np
    import torch
    from ase import units
    from torch_sim.state import SimState

    z = torch.as_tensor(np.concatenate([m.atoms.numbers for m in molecules]))
    x0 = torch.as_tensor(np.concatenate([m.atoms.positions for m in molecules]), dtype=model.dtype)
    masses = torch.as_tensor(np.concatenate([m.atoms.get_masses() for m in molecules]), dtype=model.dtype)
    idx = torch.cat([torch.full((len(m.atoms),), k) for k, m in enumerate(molecules)])
    cell = (torch.eye(3, dtype=model.dtype) * 40.0).expand(len(molecules), 3, 3).contiguous()
    dt = TIMESTEP_FS * units.fs  # ASE time units: eV, Å, amu

    def forces(x: torch.Tensor) -> torch.Tensor:
        state = SimState(positions=x, masses=masses, cell=cell, pbc=False, atomic_numbers=z, system_idx=idx)
        return model(state)["forces"]

    def run() -> None:
        x, v = x0.clone(), torch.zeros_like(x0)
        f = forces(x)
        for _ in range(n_steps):
            v = v + 0.5 * dt * f / masses[:, None]
            x = x + dt * v
            f = forces(x)
            v = v + 0.5 * dt * f / masses[:, None]
    return run


def engine(potential, molecules, n_steps: int) -> Callable[[], None]:
    """The engine's batched NVE (mdgate.md.run_nve) through an adapter."""
    from mdgate.md.batch import run_nve

    def run() -> None:
        runs = run_nve(potential, molecules, n_steps=n_steps, timestep_fs=TIMESTEP_FS, temperature_K=300.0)
        assert all(r.steps_done == n_steps for r in runs), [r.steps_done for r in runs]
    return run


def pairs(bare: Callable[[], None], ours: Callable[[], None], n_steps: int, reps: int) -> dict:
    """Time per step of each (warm-up first), alternating; the median ratio ours / bare over the pairs."""
    bare(), ours()
    rows = []
    for _ in range(reps):
        t0 = time.perf_counter()
        bare()
        t1 = time.perf_counter()
        ours()
        t2 = time.perf_counter()
        rows.append(((t1 - t0) / n_steps * 1e3, (t2 - t1) / n_steps * 1e3))
    return {"bare_ms_per_step": round(statistics.median(r[0] for r in rows), 2),
            "engine_ms_per_step": round(statistics.median(r[1] for r in rows), 2),
            "ratio": round(statistics.median(r[1] / r[0] for r in rows), 3),
            "ratios": [round(r[1] / r[0], 3) for r in rows]}


def main() -> None:
    """Measure both adapters against their bare model; print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    in_sevennet_environment()
    import torch

    from mdgate.molecules import read_molecules
    from mdgate.potentials import load

    torch.set_num_threads(args.threads)
    molecules = read_molecules()
    ase_pot, ts_pot = load(ASE_EXAMPLE, "cpu"), load(TORCHSIM_EXAMPLE, "cpu")
    results = {
        "ase": pairs(ase_bare(ase_pot.calculator, molecules, args.steps), engine(ase_pot, molecules, args.steps),
                     args.steps, args.reps),
        "torchsim": pairs(torchsim_bare(ts_pot.model, molecules, args.steps), engine(ts_pot, molecules, args.steps),
                          args.steps, args.reps),
    }
    n_atoms = sum(len(m.atoms) for m in molecules)
    print(f"SevenNet-0 (float32), {len(molecules)} molecules ({n_atoms} atoms), {args.steps} steps x {args.reps} "
          f"pairs, {args.threads} thread(s), cpu")
    print("| model called through | bare (ms/step) | engine (ms/step) | engine / bare (median of pairs) |")
    print("|---|---|---|---|")
    for key, label in (("ase", "ASE calculator, per molecule (bare: ASE VelocityVerlet)"),
                       ("torchsim", "TorchSim ModelInterface, batched (bare: model + torch Verlet)")):
        r = results[key]
        print(f"| {label} | {r['bare_ms_per_step']} | {r['engine_ms_per_step']} | {r['ratio']} |")
    speedup = results["ase"]["engine_ms_per_step"] / results["torchsim"]["engine_ms_per_step"]
    print(f"engine through TorchSim vs through ASE: {speedup:.2f}x faster")
    print(json.dumps({
        "benchmark": "engine_overhead", "command": " ".join(["benchmarks/engine_overhead.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "device": "cpu", "threads": args.threads, "steps": args.steps,
        "reps": args.reps, "molecules": len(molecules), "atoms": n_atoms, **results,
        "torchsim_vs_ase_engine_speedup": round(speedup, 2),
    }))


if __name__ == "__main__":
    main()
