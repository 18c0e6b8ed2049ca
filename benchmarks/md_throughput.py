"""MD throughput: the ASE loop, schnetpack.md, the mdgate engine and the bare model, in one run.

    .venv/bin/python benchmarks/md_throughput.py [--device cpu|cuda] [--steps 40] [--reps 3]

A: ASE ``VelocityVerlet`` + ``schnetpack.interfaces.SpkCalculator``, one molecule at a time
   (how the hand-made report was produced);
B: ``schnetpack.md`` (one ``System`` holding all molecules × replicas, ``Simulator``,
   ``VelocityVerlet``, ``SchNetPackCalculator``);
C: the mdgate engine (``mdgate.md.run_nve``, all trajectories in one batch);
D: the bare model forward + backward on the same batch, no MD around it (the floor).

Throughput is atom-steps per second (atoms advanced × steps / wall time); warm-up excluded,
medians over ``--reps``. Also measured: fail-fast (time to a Rejected verdict with fail-fast on
over off) and CPU concurrency (two per-molecule tasks at once vs one after another). Prints a
Markdown table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from mdgate.config import GateConfig  # noqa: E402
from mdgate.md.batch import run_nve  # noqa: E402
from mdgate.md.initial import maxwell_boltzmann, replica_seed  # noqa: E402
from mdgate.md.neighbors import all_pairs  # noqa: E402
from mdgate.molecules import Molecule, read_molecules  # noqa: E402
from mdgate.potentials import ModelMeta  # noqa: E402
from mdgate.potentials.schnetpack import load_potential  # noqa: E402

MOLECULES = ("aspirin", "paracetamol", "caffeine")
#: One-time setup of an engine run (ms) per (parameters, replicas), measured with C.
SETUP_MS: dict[tuple[int, int], float] = {}


def make_painn(n_atom_basis: int, n_interactions: int, cutoff: float = 5.0) -> torch.nn.Module:
    """A PaiNN potential with energy and forces outputs (used when no trained file is given)."""
    import schnetpack as spk

    torch.manual_seed(0)
    rep = spk.representation.PaiNN(
        n_atom_basis=n_atom_basis, n_interactions=n_interactions,
        radial_basis=spk.nn.GaussianRBF(20, cutoff), cutoff_fn=spk.nn.CosineCutoff(cutoff))
    return spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=n_atom_basis, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")])


def median_time(fn, reps: int) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls (seconds)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def initial_atoms(mols: list[Molecule], n_replicas: int) -> list:
    """The same start geometry and velocities the engine uses, as ASE atoms."""
    out = []
    for mol in mols:
        for r in range(n_replicas):
            atoms = mol.atoms.copy()
            v = maxwell_boltzmann(atoms, 300.0, np.random.default_rng(replica_seed(0, mol.name, r)))
            atoms.set_velocities(v)
            out.append(atoms)
    return out


def bench_ase(path: str, cutoff: float, mols: list[Molecule], steps: int, reps: int, device: str) -> float:
    """A: ASE VelocityVerlet + SpkCalculator, one molecule at a time. Returns atom-steps/s."""
    import schnetpack as spk
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms_list = initial_atoms(mols, 1)
    calcs = []
    for atoms in atoms_list:
        atoms.calc = spk.interfaces.SpkCalculator(
            model=path, neighbor_list=spk.transform.ASENeighborList(cutoff=cutoff),
            energy_unit="eV", position_unit="Ang", device=device)
        calcs.append(VelocityVerlet(atoms, 0.5 * units.fs))
        calcs[-1].run(3)  # warm-up

    def run() -> None:
        for dyn in calcs:
            dyn.run(steps)

    n_atoms = sum(len(a) for a in atoms_list)
    return n_atoms * steps / median_time(run, reps)


def bench_spk_md(path: str, cutoff: float, mols: list[Molecule], n_replicas: int, steps: int, reps: int,
                 device: str) -> float:
    """B: schnetpack.md with all molecules × replicas in one System. Returns atom-steps/s."""
    import schnetpack as spk
    from schnetpack.md import MaxwellBoltzmannInit, Simulator, System
    from schnetpack.md.calculators import SchNetPackCalculator
    from schnetpack.md.integrators import VelocityVerlet
    from schnetpack.md.neighborlist_md import NeighborListMD

    # schnetpack.md formats AddOffsets.mean with "{:f}", which fails for the 1-element array the
    # training code stores under numpy 2: give B the same model with a 0-d mean (same numbers).
    model = torch.load(path, weights_only=False)
    for module in model.modules():
        if isinstance(module, spk.transform.AddOffsets):
            module.mean = module.mean.reshape(())
    path = str(Path(tempfile.mkdtemp()) / "model_for_spk_md.pt")
    torch.save(model, path)
    atoms_list = initial_atoms(mols, n_replicas)
    system = System()
    system.load_molecules(atoms_list)
    MaxwellBoltzmannInit(300.0, remove_center_of_mass=True, remove_translation=True).initialize_system(system)
    calc = SchNetPackCalculator(
        path, force_key="forces", energy_key="energy", energy_unit="eV", position_unit="Angstrom",
        neighbor_list=NeighborListMD(cutoff, 1.0, spk.transform.ASENeighborList),
    )
    sim = Simulator(system, VelocityVerlet(0.5), calc, progress=False).to(device)
    sim.simulate(3)
    n_atoms = sum(len(a) for a in atoms_list)
    return n_atoms * steps / median_time(lambda: sim.simulate(steps), reps)


def bench_engine_and_model(pot, mols: list[Molecule], n_replicas: int, steps: int, reps: int) -> tuple[float, float]:
    """C and D: the engine (fail-fast off) and the bare model call on the same batch, atom-steps/s.

    C is per step: the time of a run of ``steps`` steps minus that of a run of 0 steps (the
    run's one-time setup: velocities, bonds, pairs, the initial forces), which a gate pays once
    per batch of thousands of steps; ``SETUP_MS`` keeps that setup for the table. C and D are
    measured in turns (setup, C, D in each of ``max(reps, 5)`` rounds; medians), so that a
    slower moment of the machine does not fall on one of them only.
    """
    def run(n: int):
        return lambda: run_nve(pot, mols, n_replicas=n_replicas, n_steps=n, timestep_fs=0.5, temperature_K=300,
                               neighbor_skin_A=0.0)

    dev = pot.device
    numbers = torch.as_tensor(np.concatenate([m.atoms.numbers for m in mols for _ in range(n_replicas)]), device=dev)
    pos = torch.as_tensor(np.concatenate([m.atoms.positions for m in mols for _ in range(n_replicas)]), device=dev)
    sizes = [len(m.atoms) for m in mols for _ in range(n_replicas)]
    sysi = torch.as_tensor(np.repeat(np.arange(len(sizes)), sizes), device=dev)
    i, j = all_pairs(sysi)
    keep = (pos[i] - pos[j]).norm(dim=1) < pot.cutoff_A
    i, j = i[keep], j[keep]

    def bare() -> None:
        for _ in range(steps):
            pot(numbers, pos, sysi, len(sizes), i, j)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    run(3)()
    bare()
    n_atoms = sum(len(m.atoms) for m in mols) * n_replicas
    setups, cs, ds = [], [], []
    for _ in range(max(reps, 5)):
        setups.append(median_time(run(0), 1))
        cs.append(median_time(run(steps), 1))
        ds.append(median_time(bare, 1))
    setup = statistics.median(setups)
    c, d = statistics.median(cs) - setup, statistics.median(ds)
    SETUP_MS.setdefault((pot.n_parameters, n_replicas), setup * 1e3)  # eager first: its setup is kept
    return n_atoms * steps / c, n_atoms * steps / d


def compiled_potential(path: str, mols: list[Molecule], n_replicas: int, device: str):
    """The potential as the engine runs long validations: ``torch.compile``d and checked."""
    pot = load_potential(path, ModelMeta(), device)
    run_nve(pot, mols, n_replicas=n_replicas, n_steps=2, timestep_fs=0.5, temperature_K=300, compile_at_step=1)
    if pot.model_call != "compiled":
        print(f"warning: {pot.model_call}", file=sys.stderr)
    return pot


def bench_failfast(path: str, molecules_file: Path, steps: int) -> dict:
    """Time to a verdict (load, MD, accuracy, verdict) for an untrained model, fail-fast on vs off."""
    from mdgate.runner import validate

    out = {}
    for ff in (True, False):
        cfg = GateConfig.model_validate({"md": {"n_steps": steps, "fail_fast": ff}})
        t0 = time.perf_counter()
        res = validate(path, cfg, ModelMeta(), device="cpu")
        out[ff] = (time.perf_counter() - t0, res.verdict.value)
    assert out[True][1] == out[False][1] == "Rejected", out
    return {"on_s": out[True][0], "off_s": out[False][0], "fraction": out[True][0] / out[False][0]}


TASK = """
import sys, time, warnings; warnings.filterwarnings('ignore')
import torch; torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, {root!r})
from mdgate.molecules import read_molecules
from mdgate.potentials.schnetpack import load_potential
from mdgate.md.batch import run_nve
mol = [m for m in read_molecules() if m.name == sys.argv[3]]
pot = load_potential(sys.argv[1], device='cpu')
run_nve(pot, mol, n_replicas=2, n_steps=3, timestep_fs=0.5, temperature_K=300, neighbor_skin_A=0.0)
t0 = time.perf_counter()
run_nve(pot, mol, n_replicas=2, n_steps=int(sys.argv[4]), timestep_fs=0.5, temperature_K=300, neighbor_skin_A=0.0)
print(time.perf_counter() - t0)
"""


def bench_concurrency(path: str, steps: int) -> dict:
    """Two per-molecule tasks (separate processes) at once vs one after another.

    Sequential: each task gets every core. Concurrent: cores are split between the tasks
    (mdgate's default), and, for the record, the oversubscribed case where each takes all.
    """
    cores = os.cpu_count() or 1
    code = TASK.format(root=str(ROOT))

    def run(threads: int, concurrent: bool) -> float:
        cmds = [[sys.executable, "-c", code, path, str(threads), name, str(steps)] for name in MOLECULES[:2]]
        t0 = time.perf_counter()
        if concurrent:
            procs = [subprocess.Popen(c, stdout=subprocess.PIPE) for c in cmds]
            [p.communicate() for p in procs]
        else:
            for c in cmds:
                subprocess.run(c, check=True, capture_output=True)
        return time.perf_counter() - t0

    seq = run(cores, False)
    split = run(max(1, cores // 2), True)
    over = run(cores, True)
    return {"sequential_s": seq, "concurrent_split_s": split, "concurrent_oversubscribed_s": over,
            "throughput_ratio_split": seq / split, "throughput_ratio_oversubscribed": seq / over}


def main() -> None:
    """Run every case and print the table and the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--large", default=str(ROOT / "examples/models/teacher.pt"))
    parser.add_argument("--small", default=str(ROOT / "examples/models/student_20x.pt"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-spk-md", action="store_true", help="skip B (slow)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    models = {}
    for label, path, shape in (("large", args.large, (128, 3)), ("small", args.small, (24, 2))):
        if not Path(path).is_file():
            path = str(tmp / f"{label}.pt")
            torch.save(make_painn(*shape), path)
        models[label] = path
    mols = [m for m in read_molecules() if m.name in MOLECULES]
    replicas = (1, 4, 8) if args.device.startswith("cuda") else (1, 4)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else (
        f"{platform.processor() or platform.machine()} CPU, {args.threads} threads")
    rows, summary = [], {}
    for label, path in models.items():
        pot = load_potential(path, ModelMeta(), args.device)
        a = bench_ase(path, pot.cutoff_A, mols, args.steps, args.reps, args.device)
        for r in replicas:
            b = None if args.skip_spk_md else bench_spk_md(path, pot.cutoff_A, mols, r, args.steps,
                                                           args.reps, args.device)
            c, d = bench_engine_and_model(pot, mols, r, args.steps, args.reps)
            cc, dc = bench_engine_and_model(compiled_potential(path, mols, r, args.device), mols, r,
                                            args.steps, args.reps)
            row = {"model": label, "n_parameters": pot.n_parameters, "replicas": r, "A_ase": a,
                   "B_spk_md": b, "C_engine": c, "D_model": d, "C_compiled": cc, "D_compiled": dc,
                   "C_over_A": c / a, "Cc_over_A": cc / a, "Cc_over_B": cc / b if b else None,
                   "C_time_over_D_time": d / c, "Cc_time_over_Dc_time": dc / cc,
                   "C_setup_ms": SETUP_MS.get((pot.n_parameters, r))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    big4 = next(r for r in rows if r["model"] == "large" and r["replicas"] == 4)
    big_max = next(r for r in rows if r["model"] == "large" and r["replicas"] == replicas[-1])
    small = [r for r in rows if r["model"] == "small"]
    torch.save(make_painn(24, 2), tmp / "untrained.pt")
    ff = bench_failfast(str(tmp / "untrained.pt"), None, 2000)
    conc = bench_concurrency(models["large"], args.steps * 2) if args.device == "cpu" else None
    lines = [
        f"MD throughput on {device_name} (atom-steps/s, {args.steps} steps, median of {args.reps}; "
        f"molecules {', '.join(MOLECULES)}; C per step: a run's one-time setup, the initial forces "
        "included, is subtracted and given below)",
        "",
        "| model | params | replicas | A: ASE+SpkCalculator | B: schnetpack.md | C: mdgate (eager) "
        "| D: bare model (eager) | C: mdgate (compiled) | D: bare model (compiled) | C/A eager | C/A compiled "
        "| C/B compiled | C/D time eager | C/D time compiled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = f"{r['B_spk_md']:.0f}" if r["B_spk_md"] else "-"
        cb = f"{r['Cc_over_B']:.1f}x" if r["Cc_over_B"] else "-"
        lines.append(f"| {r['model']} | {r['n_parameters']:,} | {r['replicas']} | {r['A_ase']:.0f} | {b} "
                     f"| {r['C_engine']:.0f} | {r['D_model']:.0f} | {r['C_compiled']:.0f} | {r['D_compiled']:.0f} "
                     f"| {r['C_over_A']:.2f}x | {r['Cc_over_A']:.2f}x | {cb} | {r['C_time_over_D_time']:.3f} "
                     f"| {r['Cc_time_over_Dc_time']:.3f} |")
    lines += ["", "One-time setup of an engine run (eager; ms): " + ", ".join(
        f"{r['model']} × {r['replicas']}: {r['C_setup_ms']:.1f}" for r in rows if r["C_setup_ms"] is not None) + "."]
    lines += ["", "Fail-fast (untrained PaiNN, default set of 10 molecules, 2000 steps, time to verdict): "
              f"{ff['on_s']:.2f} s on vs "
              f"{ff['off_s']:.2f} s off = {ff['fraction']:.3f} of the time."]
    if conc:
        lines.append(f"CPU concurrency (2 per-molecule tasks): sequential {conc['sequential_s']:.1f} s, "
                     f"concurrent with split threads {conc['concurrent_split_s']:.1f} s "
                     f"(throughput x{conc['throughput_ratio_split']:.2f}), oversubscribed "
                     f"{conc['concurrent_oversubscribed_s']:.1f} s (x{conc['throughput_ratio_oversubscribed']:.2f}).")
    table = "\n".join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"md_throughput_{args.device.split(':')[0]}.md").write_text(table + "\n")
    summary = {
        "device": device_name,
        "engine_vs_ase": big4["Cc_over_A"],
        "engine_vs_ase_eager": big4["C_over_A"],
        "engine_vs_schnetpack_md": big4["Cc_over_B"],
        "engine_overhead_vs_model": big4["C_time_over_D_time"],
        "engine_overhead_vs_model_compiled": big4["Cc_time_over_Dc_time"],
        "engine_vs_ase_max_replicas": big_max["Cc_over_A"],
        "failfast_time_fraction": ff["fraction"],
        "concurrency_throughput_ratio": conc["throughput_ratio_split"] if conc else None,
        # the small model, eager, per step: the worst over the replica counts measured
        "engine_overhead_vs_model_small": max(r["C_time_over_D_time"] for r in small),
        "engine_setup_ms_small": {r["replicas"]: round(r["C_setup_ms"], 1) for r in small},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
