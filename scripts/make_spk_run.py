"""Train a small PaiNN with schnetpack's own CLI (``spktrain``) in kcal/mol, as a schnetpack user
training on MD17 would, and keep its run folder as a test input: ``tests/data/spk_run_kcal/``
(``best_model`` and the hydra ``config.yaml``, nothing else).

The data set is the packaged GFN2-xTB reference set (``mdgate/data/reference.extxyz``, energies in
eV and forces in eV/Å) converted to kcal/mol and kcal/mol/Å in an ASE db written by
``schnetpack.data.ASEAtomsData.create``; the property units of the training config are those of
schnetpack's ``md17`` experiment (``data.property_units.energy=kcal/mol``,
``forces=kcal/mol/Ang``), so the model's outputs are in kcal/mol. The model need not be good:
the tests only need its force scale to be clearly recognisable.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_spk_run.py [--epochs 30] [--out tests/data/spk_run_kcal]
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

import numpy as np
from ase import units as ase_units
from ase.io import read

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "mdgate" / "data" / "reference.extxyz"
OUT = REPO / "tests" / "data" / "spk_run_kcal"
#: eV → kcal/mol (23.06).
KCAL_PER_MOL_PER_EV = 1.0 / (ase_units.kcal / ase_units.mol)

EXPERIMENT = """\
# @package _global_
# A small PaiNN in the units of schnetpack's md17 experiment (kcal/mol, kcal/mol/Ang).

defaults:
  - override /model: nnp
  - override /data: custom
  - override /logger: csv

run:
  experiment: mdgate_kcal

seed: 0

globals:
  cutoff: 5.
  lr: 5e-3
  energy_key: energy
  forces_key: forces

data:
  datapath: ${{run.data_dir}}/reference_kcal.db
  batch_size: 10
  num_train: {num_train}
  num_val: {num_val}
  num_workers: 0
  num_val_workers: 0
  num_test_workers: 0
  distance_unit: Ang
  property_units:
    energy: kcal/mol
    forces: kcal/mol/Ang
  transforms:
    - _target_: schnetpack.transform.SubtractCenterOfMass
    - _target_: schnetpack.transform.RemoveOffsets
      property: energy
      remove_atomrefs: True
      remove_mean: True
    - _target_: schnetpack.transform.MatScipyNeighborList
      cutoff: ${{globals.cutoff}}
    - _target_: schnetpack.transform.CastTo32

model:
  representation:
    n_atom_basis: 32
    n_interactions: 2
  output_modules:
    - _target_: schnetpack.atomistic.Atomwise
      output_key: ${{globals.energy_key}}
      n_in: ${{model.representation.n_atom_basis}}
      aggregation_mode: sum
    - _target_: schnetpack.atomistic.Forces
      energy_key: ${{globals.energy_key}}
      force_key: ${{globals.forces_key}}
  postprocessors:
    - _target_: schnetpack.transform.CastTo64
    - _target_: schnetpack.transform.AddOffsets
      property: energy
      add_mean: True
      add_atomrefs: True

task:
  outputs:
    - _target_: schnetpack.task.ModelOutput
      name: ${{globals.energy_key}}
      loss_fn:
        _target_: torch.nn.MSELoss
      metrics:
        mae:
          _target_: torchmetrics.regression.MeanAbsoluteError
      loss_weight: 0.01
    - _target_: schnetpack.task.ModelOutput
      name: ${{globals.forces_key}}
      loss_fn:
        _target_: torch.nn.MSELoss
      metrics:
        mae:
          _target_: torchmetrics.regression.MeanAbsoluteError
      loss_weight: 0.99

trainer:
  accelerator: cpu
  max_epochs: {epochs}
  enable_progress_bar: False
"""


def write_database(path: Path) -> int:
    """The reference set in kcal/mol and kcal/mol/Å, with per-element atom energies fitted by
    least squares (E ≈ Σ e[Z]) as the db's ``atomrefs``. Returns the number of frames.
    """
    from schnetpack.data import ASEAtomsData

    frames = read(str(REFERENCE), ":")
    energies_kcal = np.array([a.get_potential_energy() for a in frames]) * KCAL_PER_MOL_PER_EV
    elements = sorted({int(z) for a in frames for z in a.numbers})
    counts = np.array([[np.sum(a.numbers == z) for z in elements] for a in frames], dtype=float)
    coef, *_ = np.linalg.lstsq(counts, energies_kcal, rcond=None)
    atomrefs = np.zeros(100)
    atomrefs[elements] = coef
    path.parent.mkdir(parents=True, exist_ok=True)
    db = ASEAtomsData.create(str(path), distance_unit="Ang",
                             property_unit_dict={"energy": "kcal/mol", "forces": "kcal/mol/Ang"},
                             atomrefs={"energy": atomrefs.tolist()})
    props = [{"energy": np.array([e]), "forces": a.get_forces() * KCAL_PER_MOL_PER_EV}
             for a, e in zip(frames, energies_kcal, strict=True)]
    clean = []
    for a in frames:
        b = a.copy()
        b.calc = None
        b.info = {}
        clean.append(b)
    db.add_systems(props, clean)
    return len(frames)


def main() -> None:
    """Build the db, run ``spktrain``, copy ``best_model`` and ``config.yaml`` to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--num-train", type=int, default=400, help="training frames (of 500)")
    parser.add_argument("--num-val", type=int, default=50, help="validation frames")
    parser.add_argument("--out", type=Path, default=OUT, help="where best_model and config.yaml go")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the full run here [temporary]")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="spk_run_kcal-"))
    work.mkdir(parents=True, exist_ok=True)
    n = write_database(work / "data" / "reference_kcal.db")
    experiment = work / "configs" / "experiment" / "mdgate_kcal.yaml"
    experiment.parent.mkdir(parents=True, exist_ok=True)
    experiment.write_text(EXPERIMENT.format(epochs=args.epochs, num_train=args.num_train, num_val=args.num_val))
    spktrain = Path(sys.executable).parent / "spktrain"
    # spktrain reloads its own best checkpoint (trainer.test, load_from_checkpoint); that file pickles
    # schnetpack classes, which torch >= 2.6 refuses by default (weights_only=True): allow it for
    # this checkpoint, written moments before by the same run.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PWD=str(work),
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    t0 = time.monotonic()
    subprocess.run([str(spktrain), "experiment=mdgate_kcal", "run.id=spk_run_kcal"], cwd=work, env=env,
                   check=True)
    seconds = time.monotonic() - t0
    run = work / "runs" / "spk_run_kcal"
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("best_model", "config.yaml"):
        shutil.copy(run / name, args.out / name)
    size_kb = sum((args.out / f).stat().st_size for f in ("best_model", "config.yaml")) / 1024
    print(f"{n} frames, {args.epochs} epochs in {seconds:.0f} s; {args.out}: best_model + config.yaml "
          f"({size_kb:.0f} KiB); full run in {run}")


if __name__ == "__main__":
    main()
