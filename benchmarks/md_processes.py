"""One gate's MD with its per-molecule tasks as threads of one process (``MDGATE_TASK_RUNNER=local``)
against worker processes (``processes``), and against worker processes that each run one lane
of molecules as a batch (the default gate: ``MDGATE_MD_BATCH=lanes``), side by side in one run.

    .venv/bin/python benchmarks/md_processes.py [--model examples/models/teacher.pt] [--steps 1000]
        [--parallel 2] [--cores 2] [--repeat 1] [--out benchmarks/results]

Both modes run what the gate flow runs for MD (``flows.measure.run_molecules`` minus Prefect's
bookkeeping, which is the same in both): every molecule of the packaged set as one task
(``mdgate.stages.md.run_md``: NVE and the heat-stress ramp batched, one replica each, the demo's
profile shortened to ``--steps`` per stage), ``--parallel`` tasks at a time, each with
``cores // parallel`` torch threads. ``threads``: a thread pool in this process; ``processes``:
``flows.md_processes.MDProcessPool`` (its start-up, the workers' imports and the potential's
unpickling, is timed separately and included in the ratio); ``lanes``: the same pool, the
molecules split into ``--parallel`` batches of about equal atoms (``mdgate.stages.md.split_lanes``),
one task each. The modes alternate, ``--repeat`` times. Prints a Markdown table and one JSON line;
writes both to ``--out`` (``md_processes_cpu.md``/``.json``, ``md_processes_cpu_<model>.*`` for
another model than the teacher).

The ceiling: ``one lane`` runs the same tasks one after the other in this process, one task's
torch threads. ``--parallel`` lanes can at best divide that time by ``--parallel``; each mode's
*efficiency* is that ideal over its time, and ``ideal / threads`` bounds what processes could
gain over threads on this machine (``processes_vs_threads_ceiling``; ``--no-lane`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from flows.md_processes import MDProcessPool  # noqa: E402
from mdgate.config import GateConfig  # noqa: E402
from mdgate.potentials import ModelMeta  # noqa: E402
from mdgate.runner import configure_threads, load_inputs  # noqa: E402
from mdgate.stages.md import run_md, split_lanes  # noqa: E402


def config_for(steps: int) -> GateConfig:
    """The demo profile with ``steps`` NVE steps and a stress ramp of as many steps (0.5 fs)."""
    ps = steps * 0.5e-3
    return GateConfig.model_validate({
        "md": {"n_steps": steps, "n_replicas": 1, "device": "cpu"},
        "stress": {"ramp_ps": 0.75 * ps, "hold_ps": 0.25 * ps},
        "sanity": {"enabled": False}, "oracle": {"enabled": False}})


def run_threads(inputs, config: GateConfig, parallel: int, threads: int) -> float:
    """Seconds for every molecule's MD as tasks of a thread pool in this process."""
    def one(mol):
        configure_threads(threads)
        return run_md(inputs.potential, [mol], config)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, inputs.molecules))
    return time.perf_counter() - t0


def run_one_lane(inputs, config: GateConfig, threads: int) -> float:
    """Seconds for every molecule's MD one after the other in this thread (one lane)."""
    configure_threads(threads)
    t0 = time.perf_counter()
    for mol in inputs.molecules:
        run_md(inputs.potential, [mol], config)
    return time.perf_counter() - t0


def run_processes(inputs, config: GateConfig, parallel: int, threads: int,
                  lanes: bool = False) -> tuple[float, float]:
    """Seconds for the same in worker processes (start-up included), and the start-up alone;
    with ``lanes``, one task per lane (``split_lanes``) instead of one per molecule.
    """
    batches = split_lanes(inputs.molecules, parallel) if lanes else [[m] for m in inputs.molecules]
    t0 = time.perf_counter()
    with MDProcessPool(inputs.potential, parallel, threads) as pool:
        for f in pool._warming:
            f.result()
        up = time.perf_counter() - t0
        with ThreadPoolExecutor(parallel) as waiters:
            list(waiters.map(lambda b: pool.run(b, config, lambda *a: None), batches))
    return time.perf_counter() - t0, up


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "examples" / "models" / "teacher.pt")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--lane", action=argparse.BooleanOptionalAction, default=True,
                    help="also time one lane (the tasks one after the other): the ceiling of the ratio")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    meta = ModelMeta.model_validate(json.loads(args.model.with_suffix(".json").read_text()))
    config = config_for(args.steps)
    threads = max(1, args.cores // args.parallel)
    inputs = load_inputs(args.model, config, meta, "cpu")
    # The gate's order (flows.measure.run_molecules): largest first.
    inputs.molecules = sorted(inputs.molecules, key=lambda m: len(m.atoms), reverse=True)
    rows, t_threads, t_procs, t_up, t_lanes = [], [], [], [], []
    for k in range(args.repeat):
        t = run_threads(inputs, config, args.parallel, threads)
        p, up = run_processes(inputs, config, args.parallel, threads)
        la, _ = run_processes(inputs, config, args.parallel, threads, lanes=True)
        t_threads.append(t)
        t_procs.append(p)
        t_up.append(up)
        t_lanes.append(la)
        rows.append(f"| {k + 1} | {t:.1f} | {p:.1f} | {up:.1f} | {la:.1f} | {t / p:.2f} | {p / la:.2f} "
                    f"| {t / la:.2f} |")
        print(rows[-1], flush=True)
    ratio = sum(t_threads) / sum(t_procs)
    lane = run_one_lane(inputs, config, threads) if args.lane else None
    ideal = lane / args.parallel if lane else None
    head = (f"One gate's MD, {args.model.stem} on the packaged set ({len(inputs.molecules)} molecules, "
            f"{args.steps} NVE + {args.steps} stress steps, 1 replica), {args.parallel} tasks at a time, "
            f"{threads} torch thread(s) each ({platform.machine()}, {os.cpu_count()} cores, "
            f"1-min load average {os.getloadavg()[0]:.1f} at the end)")
    table = "\n".join([head, "", "| run | threads s | processes s | of which start-up s | processes, lanes s "
                       "| threads / processes | processes / lanes | threads / lanes |",
                       "|---|---|---|---|---|---|---|---|", *rows])
    mean_t, mean_p = sum(t_threads) / len(t_threads), sum(t_procs) / len(t_procs)
    if ideal:
        table += (f"\n\nOne lane (the same tasks one after the other, {threads} torch thread(s)): {lane:.1f} s; "
                  f"{args.parallel} lanes at best {ideal:.1f} s. Efficiency against that ideal: threads "
                  f"{ideal / mean_t:.2f}, processes {ideal / mean_p:.2f}; "
                  f"processes could gain at most {mean_t / ideal:.2f}x over threads here with one task per "
                  "molecule (lanes batch the molecules: a different computation, not bounded by it).")
    summary = {"model": args.model.stem, "steps": args.steps, "parallel": args.parallel, "threads_each": threads,
               "threads_s": t_threads, "processes_s": t_procs, "processes_startup_s": t_up,
               "processes_vs_threads": round(ratio, 3), "lanes_s": t_lanes,
               "lanes_vs_molecule": round(sum(t_procs) / sum(t_lanes), 3),
               "lanes_processes_vs_threads": round(sum(t_threads) / sum(t_lanes), 3), "one_lane_s": lane,
               "processes_vs_threads_ceiling": round(mean_t / ideal, 3) if ideal else None}
    print()
    print(table)
    print(json.dumps(summary))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "md_processes_cpu" + ("" if args.model.stem == "teacher" else f"_{args.model.stem}")
    (args.out / f"{stem}.md").write_text(table + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
