"""What the oracle itself does under the heat-stress ramp: the bounds' margins.

Runs the stress stage's ramp (``mdgate.config.StressSettings``: 300 → 1000 K over 1.5 ps, 0.5 ps
hold, Langevin γ 10/ps, 0.5 fs) with GFN2-xTB itself as the potential (through mdgate's engine and
its ASE adapter; nothing stops a trajectory), on the packaged molecules, and records each
structural figure two ways: its peak (one record) and the level it held for a window of
consecutive records (``--hold-fs``). With ``--model`` the same ramp runs with that model instead.

Writes ``benchmarks/results/stress_calibration_<label>.json`` and ``.md``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/calibrate_stress.py --replicas 4            # xTB
    OMP_NUM_THREADS=1 .venv/bin/python scripts/calibrate_stress.py --model examples/models/painn_hot.pt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mdgate.config import StressSettings
from mdgate.md.batch import run_stress
from mdgate.md.trajectory import Ramp, StopLimits, sustained
from mdgate.molecules import read_molecules
from mdgate.potentials import load
from mdgate.potentials.descriptor import Descriptor

ROOT = Path(__file__).resolve().parents[1]
XTB = {"schema_version": 1, "framework": "ase", "loader": "tblite.ase:TBLite",
       "kwargs": {"method": "GFN2-xTB", "verbosity": 0}, "energy_unit": "eV", "length_unit": "Angstrom",
       "level_of_theory": "GFN2-xTB"}
FIGURES = [("max_bond_deviation_A", False), ("min_distance_A", True), ("isolated_h_atoms", False),
           ("max_force_eV_per_A", False), ("max_temperature_excess_K", False)]


def main() -> None:
    """Run the ramp and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model file or descriptor (default: GFN2-xTB itself)")
    parser.add_argument("--label", help="name in the output files (default: xtb or the model's stem)")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seed", type=int, default=101, help="not the gate's default stress seed (1)")
    parser.add_argument("--hold-fs", type=float, default=50.0)
    parser.add_argument("--record-every", type=int, default=10)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--merge", nargs="+", metavar="LABEL",
                        help="join the JSON files of these labels (runs split over processes) into --label")
    args = parser.parse_args()
    label = args.label or (Path(args.model).stem if args.model else "xtb")
    res = ROOT / "benchmarks" / "results"
    if args.merge:
        parts = [json.loads((res / f"stress_calibration_{m}.json").read_text()) for m in args.merge]
        out = {**parts[0], "label": label, "seconds": sum(p["seconds"] for p in parts),
               "command": " + ".join(p["command"] for p in parts),
               "trajectories": [t for p in parts for t in p["trajectories"]]}
        _write(res, label, out)
        for m in args.merge:
            for suffix in ("json", "md"):
                (res / f"stress_calibration_{m}.{suffix}").unlink()
        return
    potential = load(args.model) if args.model else load(Descriptor.model_validate(XTB), device="cpu")
    st = StressSettings()
    molecules = [m for m in read_molecules() if not args.only or m.name in args.only]
    window = max(1, round(args.hold_fs / (st.timestep_fs * args.record_every))) + 1
    t0 = time.perf_counter()
    trajs = run_stress(potential, molecules, n_replicas=args.replicas,
                       ramp=Ramp(st.start_temperature_K, st.end_temperature_K, st.ramp_steps, st.friction_per_ps),
                       n_steps=st.n_steps, timestep_fs=st.timestep_fs, seed=args.seed,
                       record_every=args.record_every, limits=StopLimits())
    rows = []
    for t in trajs:
        row: dict = {"molecule": t.molecule, "replica": t.replica, "steps_done": t.steps_done,
                     "failure": t.failure.check if t.failure else None}
        for name, lower in FIGURES:
            series = t.series.get(name, [])
            row[f"{name}_peak"] = sustained(series, 1, lower)
            row[f"{name}_held"] = sustained(series, window, lower)
        rows.append(row)
    seconds = time.perf_counter() - t0
    out = {"label": label, "model": args.model or "GFN2-xTB (tblite)", "replicas": args.replicas, "seed": args.seed,
           "hold_fs": args.hold_fs, "window_records": window, "record_every": args.record_every,
           "ramp": st.model_dump(mode="json", exclude={"criteria"}), "seconds": round(seconds, 1),
           "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "command": "scripts/calibrate_stress.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
               for k, v in vars(args).items() if v not in (None, False)),
           "trajectories": rows}
    _write(res, label, out)


def _write(res: Path, label: str, out: dict) -> None:
    (res / f"stress_calibration_{label}.json").write_text(json.dumps(out, indent=1) + "\n")
    (res / f"stress_calibration_{label}.md").write_text(render(out))
    print(render(out))


def render(out: dict) -> str:
    """Per molecule: the worst peak and the worst held level of each structural figure."""
    lines = [f"# Heat-stress ramp with {out['model']}", "",
             f"{out['date']}, {out['machine']}, `{out['command']}`, {out['seconds']} s; "
             f"{out['replicas']} trajectories per molecule, held = the level kept for "
             f"{out['window_records']} consecutive records ({out['hold_fs']:g} fs).", "",
             "| molecule | trajectories | bond dev. peak (Å) | bond dev. held (Å) | min distance peak (Å) "
             "| min distance held (Å) | H lost (peak) | max force (eV/Å) | T above target (K) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by: dict[str, list[dict]] = {}
    for r in out["trajectories"]:
        by.setdefault(r["molecule"], []).append(r)

    def worst(rs: list[dict], key: str, lower: bool) -> str:
        v = [r[key] for r in rs if r[key] is not None]
        return "n/a" if not v else f"{(min(v) if lower else max(v)):.3f}"

    for name, rs in [*by.items(), ("all", out["trajectories"])]:
        lines.append(f"| {name} | {len(rs)} | {worst(rs, 'max_bond_deviation_A_peak', False)} | "
                     f"{worst(rs, 'max_bond_deviation_A_held', False)} | {worst(rs, 'min_distance_A_peak', True)} | "
                     f"{worst(rs, 'min_distance_A_held', True)} | {worst(rs, 'isolated_h_atoms_peak', False)} | "
                     f"{worst(rs, 'max_force_eV_per_A_peak', False)} | "
                     f"{worst(rs, 'max_temperature_excess_K_peak', False)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
