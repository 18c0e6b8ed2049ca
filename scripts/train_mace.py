"""Train a small MACE on the project's GFN2-xTB data, in MACE's own environment.

    .venv/bin/python scripts/train_mace.py [--frames 800] [--epochs 100] [--out examples/mace]

``mace-torch`` 0.3.16 pins ``e3nn==0.4.4``, which other frameworks' packages do not accept: the
model is trained, and gated, in an environment built from its descriptor's requirements
(``mdgate.potentials.environments``; this script builds it, once, and re-runs itself there).
The data: ``--frames`` frames of ``scripts/data/train.extxyz`` (every molecule, evenly spaced),
10 % held out for validation, MACE's CLI (``mace_run_train``) with a small model: 16 scalar
channels (``16x0e``), 2 interactions, ``max_ell`` 2, correlation 2, cutoff 4 Å, float64.
Writes ``OUT/small_mace.model`` (the pickled module, what ``MACECalculator`` loads),
``OUT/mdgate.yaml`` (its descriptor) and ``OUT/train.log``; about 10 minutes on 2 cores
(force RMSE on the held-out frames about 0.1 eV/Å: a small, quickly trained model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REQUIREMENTS = ["mace-torch==0.3.16"]
R_MAX_A = 4.0

DESCRIPTOR = """\
# A small MACE (16x0e, 2 interactions, r_max {r_max} A) trained by scripts/train_mace.py on
# GFN2-xTB frames of the packaged molecules. mace-torch pins e3nn==0.4.4: the gate runs it in an
# environment built from the requirements below, in the model process.
schema_version: 1
framework: ase
loader: mdgate.potentials.mace:load_mace
weights: [small_mace.model]
kwargs:
  dtype: float64
energy_unit: eV
length_unit: Angstrom
elements: [H, C, N, O]
cutoff_A: {r_max}
level_of_theory: GFN2-xTB
requirements:
{requirements}
"""


def in_mace_environment() -> None:
    """Re-run this script in MACE's environment unless it is already there."""
    try:
        import mace  # noqa: F401
    except ImportError:
        from mdgate.potentials.environments import environment

        python, _ = environment(REQUIREMENTS)
        os.execv(str(python), [str(python), *sys.argv])


def subset(frames: int, dst: Path) -> int:
    """Every molecule's frames, evenly spaced, with MACE's keys (REF_energy, REF_forces)."""
    from ase.io import read, write

    atoms = read(ROOT / "scripts" / "data" / "train.extxyz", index=":")
    step = max(1, len(atoms) // frames)
    picked = atoms[::step][:frames]
    for a in picked:
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
        a.calc = None
    write(dst, picked, format="extxyz")
    return len(picked)


def main() -> None:
    """Train and write the model and its descriptor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "mace")
    args = parser.parse_args()
    in_mace_environment()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mdgate-mace-") as tmp:
        work = Path(tmp)
        n = subset(args.frames, work / "train.extxyz")
        cmd = [sys.executable, "-m", "mace.cli.run_train", "--name", "small_mace",
               "--train_file", str(work / "train.extxyz"), "--valid_fraction", "0.1", "--E0s", "average",
               "--model", "MACE", "--hidden_irreps", "16x0e", "--num_interactions", "2", "--max_ell", "2",
               "--correlation", "2", "--r_max", str(R_MAX_A), "--batch_size", "10", "--valid_batch_size", "20",
               "--max_num_epochs", str(args.epochs), "--lr", "0.01", "--scheduler_patience", "5",
               "--energy_weight", "1", "--forces_weight", "100", "--default_dtype", "float64",
               "--device", "cpu", "--seed", str(args.seed), "--work_dir", str(work), "--save_cpu"]
        print(f"training a small MACE on {n} frames, {args.epochs} epochs ...", flush=True)
        with open(args.out / "train.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        shutil.copy(work / "small_mace.model", args.out / "small_mace.model")
    requirements = "\n".join(f"  - {r}" for r in REQUIREMENTS)
    (args.out / "mdgate.yaml").write_text(DESCRIPTOR.format(r_max=R_MAX_A, requirements=requirements))
    size = (args.out / "small_mace.model").stat().st_size
    print(f"wrote {args.out / 'small_mace.model'} ({size / 1024:.0f} KiB) and mdgate.yaml "
          f"in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
