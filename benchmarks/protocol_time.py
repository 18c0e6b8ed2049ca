"""Time to verdict of the validation protocol, stage by stage, against the previous default.

    .venv/bin/python benchmarks/protocol_time.py [--models painn_small teacher]
        [--molecules aspirin paracetamol caffeine] [--threads 2] [--variants old nve3 protocol]
        [--out benchmarks/results]

For each model (``examples/models/<name>.pt`` with its JSON metadata), in one run on the same
molecules, one after the other on an otherwise idle machine:

* ``old``: the previous default gate (NVE 4000 steps, 1 replica; no sanity, stress, oracle);
* ``nve3``: the NVE stage alone with the new default 3 replicas;
* ``protocol``: the whole default protocol (sanity, NVE and stress in one batch, reference
  accuracy, xTB oracle).

Prints a Markdown table and, last, one JSON object with ``protocol_time_to_verdict_s`` per model
and the ratios ``protocol / old`` and ``protocol / nve3`` (what the stress stage and the other new
stages add at equal replicas).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from ase.io import write  # noqa: E402

from mdgate.config import GateConfig  # noqa: E402
from mdgate.molecules import read_molecules, read_reference  # noqa: E402
from mdgate.potentials import ModelMeta  # noqa: E402
from mdgate.runner import configure_threads, validate  # noqa: E402

OFF = {"sanity": {"enabled": False}, "stress": {"enabled": False}, "oracle": {"enabled": False}}
VARIANTS = {"old": {"md": {"n_replicas": 1}, **OFF}, "nve3": {**OFF}, "protocol": {}}


def subset(names: list[str], folder: Path) -> tuple[Path, Path]:
    """The packaged molecules and reference frames of ``names``, written to ``folder``."""
    mols = [m.atoms for m in read_molecules(None) if m.name in names]
    ref = read_reference(None)
    frames = [f for f, n in zip(ref.frames, ref.names, strict=True) if n in names]
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "molecules.extxyz", mols)
    write(folder / "reference.extxyz", frames)
    return folder / "molecules.extxyz", folder / "reference.extxyz"


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["painn_small", "teacher"])
    ap.add_argument("--molecules", nargs="+", default=["aspirin", "paracetamol", "caffeine"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    configure_threads(args.threads)
    mols, ref = subset(args.molecules, args.out / "protocol_time_sets")
    rows, summary = [], {}
    for name in args.models:
        path = ROOT / "examples" / "models" / f"{name}.pt"
        meta = ModelMeta.model_validate(json.loads(path.with_suffix(".json").read_text()))
        times = {}
        for variant, overrides in ((v, VARIANTS[v]) for v in args.variants):
            config = GateConfig.model_validate({**overrides, "md": {**overrides.get("md", {}), "device": "cpu",
                                                                    "threads": args.threads},
                                                "molecules": str(mols), "reference": str(ref)})
            t = time.perf_counter()
            result = validate(path, config, meta)
            times[variant] = time.perf_counter() - t
            tm = result.timing
            rows.append((name, result.model.n_parameters, variant, result.verdict.value, times[variant], tm.sanity_s,
                         tm.md_s, tm.accuracy_s, tm.oracle_s, result.decided_by or "-"))
            print(f"{name} {variant}: {times[variant]:.1f} s, {result.verdict.value}", file=sys.stderr, flush=True)
        summary[name] = {"n_parameters": result.model.n_parameters,
                         **{f"{v}_s": round(t, 1) for v, t in times.items()}}
        for base in ("old", "nve3"):
            if "protocol" in times and base in times:
                summary[name][f"protocol_vs_{base}"] = round(times["protocol"] / times[base], 2)
    lines = [f"Time to verdict on {', '.join(args.molecules)} ({platform.machine()}, {os.cpu_count()} cores, "
             f"{args.threads} torch threads, 1-min load average {os.getloadavg()[0]:.1f} at the end)", "",
             "| model | params | variant | verdict | total s | sanity s | MD s | accuracy s | oracle s | decided by |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]:,} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.1f} | {r[8]:.1f} "
              f"| {r[9]} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protocol_time_cpu.md").write_text(table + "\n")
    print(json.dumps({"protocol_time_to_verdict_s": {k: v.get("protocol_s") for k, v in summary.items()},
                      "models": summary}))


if __name__ == "__main__":
    main()
