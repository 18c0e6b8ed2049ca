"""GFN2-xTB training data at another temperature, from the packaged start geometries.

The packaged training set (``scripts/data/train.extxyz``) samples 500 K Langevin MD. Models
trained on colder or hotter data show what the gate is for: a model of the same recipe trained
on 100 K data only (a narrow-data model) and one trained on 500 K + 1000 K data (a robust model).

Usage::

    .venv/bin/python scripts/make_train_data.py --temperature-K 1000 --out scripts/data/train_1000K.extxyz.gz
    .venv/bin/python scripts/make_train_data.py --temperature-K 100 --out scripts/data/train_100K.extxyz.gz

Frames are written as they are made (a killed run keeps the molecules it finished, ``--only``
continues with the others). Seeds: ``seed_base + k`` for the k-th packaged molecule.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ase.io import read, write
from make_molecule_set import ROOT, sample


def main() -> None:
    """Sample every packaged molecule and write the file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperature-K", type=float, required=True)
    parser.add_argument("--n-frames", type=int, default=400, help="frames per molecule")
    parser.add_argument("--every", type=int, default=10, help="MD steps (0.5 fs) between frames")
    parser.add_argument("--seed-base", type=int, default=3000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="subset of molecule names")
    args = parser.parse_args()
    starts = read(ROOT / "mdgate" / "data" / "molecules.extxyz", index=":")
    frames = []
    for k, start in enumerate(starts):
        name, smiles = start.info["name"], start.info.get("smiles", "")
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        frames += sample(start, args.n_frames, args.every, seed=args.seed_base + k, name=name, smiles=smiles,
                         temperature_K=args.temperature_K)
        write(args.out, frames, format="extxyz")
        print(f"{name}: {args.n_frames} frames at {args.temperature_K:g} K in {time.perf_counter() - t0:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
