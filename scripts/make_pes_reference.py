"""The oracle's side of the ``pes`` stage for the packaged molecule set, under the default
settings: conformer minima, relaxed torsion scans and harmonic frequencies by GFN2-xTB, written to
``mdgate/data/pes_reference.json.gz`` so that the default protocol never pays for them.

    .venv/bin/python scripts/make_pes_reference.py [--out PATH]

Prints each molecule's cost; the stage recomputes (and caches) whatever a changed setting, molecule
or oracle makes different.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from dataclasses import asdict
from pathlib import Path

from mdgate.config import GateConfig
from mdgate.molecules import packaged_path, read_molecules
from mdgate.pes.reference import PACKAGED, cache_key, compute_reference
from mdgate.pes.topology import topology
from mdgate.stages.oracle import make_oracle


def main() -> None:
    """Compute and write the packaged set's oracle landscape."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=packaged_path(PACKAGED))
    args = ap.parse_args()
    config = GateConfig()
    oracle = make_oracle(config.oracle)
    out, t0 = {}, time.perf_counter()
    for mol in read_molecules():
        ref = compute_reference(mol, topology(mol.atoms, mol.name), oracle, config.pes)
        out[cache_key(mol, oracle, config.pes)] = asdict(ref)
        print(f"{mol.name:16s} {len(mol.atoms):3d} atoms  {len(ref.conformers)} minima of {ref.n_embedded} starts  "
              f"{len(ref.rotors)} torsions  {len(ref.frequencies_cm1)} modes  {ref.seconds:6.1f} s", flush=True)
    with gzip.open(args.out, "wt") as f:
        json.dump(out, f)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
