"""Calibrate the ``pes`` stage's bounds: every figure of the stage for the example models, against
GFN2-xTB, on the packaged molecule set (the oracle's side comes from the packaged reference).

    .venv/bin/python scripts/calibrate_pes.py [--models teacher painn_hot ...] [--out NAME]

Writes ``benchmarks/results/<NAME>.{json,md}``: per model, the worst value of each check with its
molecule, the per-molecule figures, and the candidate-side seconds of the stage.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from mdgate.checks.table import CHECKS, DEFAULTS, Stage
from mdgate.config import GateConfig
from mdgate.molecules import read_molecules
from mdgate.potentials import load
from mdgate.stages.oracle import make_oracle
from mdgate.stages.pes import measure_molecule

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["teacher", "painn_hot", "painn_small", "painn_cold", "student_2x", "student_5x", "student_20x",
          "student_20x_epoch1"]


def worst(per: dict[str, dict[str, float | None]], name: str) -> tuple[float | None, str | None]:
    """The worst value of check ``name`` over the molecules, and where."""
    vals = [(v, m) for m, f in per.items() if (v := f.get(name)) is not None]
    if not vals:
        return None, None
    return (min if CHECKS[name].lower else max)(vals)


def main() -> None:
    """Measure and write the calibration table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--out", default="pes_calibration")
    args = ap.parse_args()
    torch.set_num_threads(2)
    config = GateConfig()
    oracle = make_oracle(config.oracle)
    molecules = read_molecules()
    checks = list(DEFAULTS[Stage.PES])
    results = {}
    for name in args.models:
        pot = load(ROOT / "examples" / "models" / f"{name}.pt", "cpu")
        t0 = time.perf_counter()
        per = {m.name: {c: v for c, v in measure_molecule(pot, m, oracle, config)[0].items() if c in checks}
               for m in molecules}
        seconds = time.perf_counter() - t0
        results[name] = {"seconds": seconds, "per_molecule": per,
                         "worst": {c: dict(zip(("value", "molecule"), worst(per, c), strict=True)) for c in checks}}
        line = "  ".join(f"{c}={v:.3g}@{m}" for c in checks if (v := results[name]["worst"][c]["value"]) is not None
                         for m in [results[name]["worst"][c]["molecule"]])
        print(f"{name}: {seconds:.1f} s  {line}", flush=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    command = f"python scripts/calibrate_pes.py --models {' '.join(args.models)}"
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine, "command": command,
            "oracle": oracle.name}
    out = ROOT / "benchmarks" / "results" / args.out
    out.with_suffix(".json").write_text(json.dumps({**meta, "models": results}, indent=1))
    rows = ["| model | s | " + " | ".join(f"{c} ({CHECKS[c].unit})" for c in checks) + " |",
            "|---|---|" + "---|" * len(checks)]
    for name, r in results.items():
        cells = [f"{w['value']:.3g} ({w['molecule']})" if w["value"] is not None else "-"
                 for w in r["worst"].values()]
        rows.append(f"| {name} | {r['seconds']:.0f} | " + " | ".join(cells) + " |")
    head = f"# pes calibration ({meta['date']}, {machine})\n\n`{command}`\n\n"
    out.with_suffix(".md").write_text(head + "Worst value over the packaged molecules (and where).\n\n"
                                      + "\n".join(rows) + "\n")
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
