"""Train the example schnetpack PaiNN potentials shipped in ``examples/models``.

Three kinds of model are trained on the GFN2-xTB molecule set written by
``scripts/make_molecule_set.py`` (energies in eV, positions in Å):

* ``small``: a small PaiNN trained directly on the xTB data (``painn_small.pt``);
* ``teacher``: a large PaiNN (n_atom_basis 128, 3 interactions) trained on the xTB data;
* ``student``: smaller PaiNNs distilled from the teacher at a given compression ratio;
  ``--direct-forces`` gives a student whose forces come from an equivariant vector head
  (:class:`mdgate.potentials.direct.DirectForces`) instead of −dE/dR, and
  ``--stop-after-epochs K`` ends a run after K epochs of its schedule (an early checkpoint).

Every model is a full pickled ``schnetpack.model.NeuralNetworkPotential`` (``torch.save(model)``),
loadable with ``schnetpack.utils.load_model`` and usable with
``schnetpack.interfaces.SpkCalculator(model=path, energy_unit="eV", position_unit="Ang", ...)``.
With post-processing on, its ``energy`` output is the absolute GFN2-xTB-scale total energy in eV:
per-element atom reference energies fitted by least squares on the training set are subtracted
for training and added back by ``AddOffsets``.

Beside each ``<name>.pt`` the script writes ``<name>.json`` (metrics on the held-out reference
set, metadata, training settings) and ``<name>.log`` (per-epoch progress). A resumable training
state is kept in ``~/.cache/mdgate/train_models/<name>.ckpt`` (``--state-dir``); ``--resume``
continues from it.

Usage::

    .venv/bin/python scripts/train_models.py small
    .venv/bin/python scripts/train_models.py teacher --max-minutes 45
    .venv/bin/python scripts/train_models.py student --compression 2
    .venv/bin/python scripts/train_models.py student --compression 5 --direct-forces
    .venv/bin/python scripts/train_models.py student --compression 20 --stop-after-epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import schnetpack as spk
import schnetpack.properties as P
import torch
from ase.io import read

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PATH = ROOT / "scripts" / "data" / "train.extxyz"
REFERENCE_PATH = ROOT / "mdgate" / "data" / "reference.extxyz"
MODEL_DIR = ROOT / "examples" / "models"
# Resumable training states live outside the work tree: other tools clean ``out/``.
STATE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mdgate" / "train_models"
CUTOFF_A = 5.0
N_RBF = 20
LEVEL_OF_THEORY = "GFN2-xTB"
TEACHER_NAME = "teacher"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One labelled configuration as tensors ready for batching.

    Attributes:
        name: molecule name.
        numbers: atomic numbers ``[n]`` (int64).
        positions: positions in Å ``[n, 3]`` (float32).
        energy: total energy in eV (float, absolute scale).
        forces: forces in eV/Å ``[n, 3]`` (float32).
        idx_i: first atom of each ordered pair within the cutoff (int64).
        idx_j: second atom of each ordered pair within the cutoff (int64).
    """

    name: str
    numbers: torch.Tensor
    positions: torch.Tensor
    energy: float
    forces: torch.Tensor
    idx_i: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    idx_j: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __post_init__(self) -> None:
        if self.idx_i.numel() == 0:
            self.idx_i, self.idx_j = pairs_within_cutoff(self.positions, CUTOFF_A)


def pairs_within_cutoff(positions: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return all ordered pairs ``i != j`` closer than ``cutoff`` (no periodic images).

    Pairs at or beyond the cutoff contribute exactly zero through ``CosineCutoff``, so this list
    gives the same energies and forces as an all-pairs list.

    Args:
        positions: ``[n, 3]`` positions in Å.
        cutoff: cutoff radius in Å.

    Returns:
        ``(idx_i, idx_j)`` int64 index tensors.
    """
    d = torch.cdist(positions.double(), positions.double())
    mask = d < cutoff
    mask.fill_diagonal_(False)
    idx_i, idx_j = torch.nonzero(mask, as_tuple=True)
    return idx_i, idx_j


def load_frames(path: Path) -> list[Frame]:
    """Read an extxyz file with single-point energies/forces into :class:`Frame` objects.

    Args:
        path: extxyz file written by ``scripts/make_molecule_set.py``.

    Returns:
        The frames in file order.
    """
    frames = []
    for atoms in read(path, index=":"):
        frames.append(
            Frame(
                name=str(atoms.info.get("name", atoms.get_chemical_formula())),
                numbers=torch.as_tensor(atoms.numbers, dtype=torch.long),
                positions=torch.as_tensor(atoms.positions, dtype=torch.float32),
                energy=float(atoms.get_potential_energy()),
                forces=torch.as_tensor(atoms.get_forces(), dtype=torch.float32),
            )
        )
    return frames


def split_train_val(frames: list[Frame], val_fraction: float) -> tuple[list[Frame], list[Frame]]:
    """Hold out the last ``val_fraction`` of each molecule's trajectory for validation.

    Frames of one trajectory are strongly correlated, so a contiguous block per molecule gives
    a less optimistic validation error than a random split.

    Args:
        frames: training frames, grouped by molecule in trajectory order.
        val_fraction: fraction of each molecule's frames to hold out.

    Returns:
        ``(train, val)`` lists.
    """
    by_name: dict[str, list[Frame]] = {}
    for f in frames:
        by_name.setdefault(f.name, []).append(f)
    train, val = [], []
    for group in by_name.values():
        n_val = max(1, round(val_fraction * len(group)))
        train += group[:-n_val]
        val += group[-n_val:]
    return train, val


def fit_atomrefs(frames: list[Frame], zmax: int = 100) -> torch.Tensor:
    """Fit per-element reference energies by least squares: ``E ≈ Σ_atoms e[Z]``.

    Args:
        frames: frames with absolute energies in eV.
        zmax: length of the returned table.

    Returns:
        ``[zmax]`` float64 tensor of atom reference energies in eV (zero for absent elements).
    """
    elements = sorted({int(z) for f in frames for z in f.numbers})
    counts = np.zeros((len(frames), len(elements)))
    col = {z: k for k, z in enumerate(elements)}
    for r, f in enumerate(frames):
        for z in f.numbers.tolist():
            counts[r, col[z]] += 1
    energies = np.array([f.energy for f in frames])
    coef, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    atomrefs = torch.zeros(zmax, dtype=torch.float64)
    for z, c in zip(elements, coef, strict=True):
        atomrefs[z] = float(c)
    return atomrefs


def collate(frames: list[Frame], atomrefs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Concatenate frames into one schnetpack input batch with targets.

    Args:
        frames: frames to batch.
        atomrefs: if given, the targets ``energy_target`` are energies minus the atom references.

    Returns:
        A dict with the ``schnetpack.properties`` input keys plus ``energy_target`` (float64,
        ``[n_frames]``) and ``forces_target`` (float32, ``[n_atoms, 3]``).
    """
    n_atoms = torch.tensor([len(f.numbers) for f in frames], dtype=torch.long)
    starts = torch.cumsum(n_atoms, 0) - n_atoms
    numbers = torch.cat([f.numbers for f in frames])
    idx_i = torch.cat([f.idx_i + s for f, s in zip(frames, starts.tolist(), strict=True)])
    idx_j = torch.cat([f.idx_j + s for f, s in zip(frames, starts.tolist(), strict=True)])
    energy = torch.tensor([f.energy for f in frames], dtype=torch.float64)
    idx_m = torch.repeat_interleave(torch.arange(len(frames)), n_atoms)
    if atomrefs is not None:
        energy = energy - torch.zeros(len(frames), dtype=torch.float64).index_add_(
            0, idx_m, atomrefs[numbers]
        )
    return {
        P.Z: numbers,
        P.R: torch.cat([f.positions for f in frames]),
        P.idx_m: idx_m,
        P.n_atoms: n_atoms,
        P.idx_i: idx_i,
        P.idx_j: idx_j,
        P.offsets: torch.zeros((idx_i.numel(), 3), dtype=torch.float32),
        P.cell: torch.zeros((len(frames), 3, 3), dtype=torch.float32),
        P.pbc: torch.zeros((len(frames), 3), dtype=torch.bool),
        "energy_target": energy,
        "forces_target": torch.cat([f.forces for f in frames]),
    }


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a fresh dict with only the model inputs of ``batch`` (the model mutates it)."""
    keys = (P.Z, P.R, P.idx_m, P.n_atoms, P.idx_i, P.idx_j, P.offsets, P.cell, P.pbc)
    out = {k: batch[k] for k in keys}
    out[P.R] = batch[P.R].clone()
    return out


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def build_model(
    n_atom_basis: int, n_interactions: int, atomrefs: torch.Tensor, direct_forces: bool = False
) -> spk.model.NeuralNetworkPotential:
    """Build a PaiNN energy/force potential with the atom references as a post-processor.

    Args:
        n_atom_basis: feature width.
        n_interactions: number of interaction/mixing blocks.
        atomrefs: ``[100]`` per-element reference energies (eV) added back by ``AddOffsets``.
        direct_forces: forces from a gated equivariant vector head on the representation
            (:class:`mdgate.potentials.direct.DirectForces`) instead of −dE/dR; the energy head
            is the same.

    Returns:
        The (untrained) model, float32, post-processing on.
    """
    representation = spk.representation.PaiNN(
        n_atom_basis=n_atom_basis,
        n_interactions=n_interactions,
        radial_basis=spk.nn.GaussianRBF(n_rbf=N_RBF, cutoff=CUTOFF_A),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF_A),
    )
    return spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=n_atom_basis, output_key="energy"),
            force_head(n_atom_basis, direct_forces),
        ],
        postprocessors=[
            spk.transform.CastTo64(),
            spk.transform.AddOffsets(
                "energy",
                add_mean=False,
                add_atomrefs=True,
                atomrefs=atomrefs.to(torch.float64).clone(),
            ),
        ],
    )


def force_head(n_atom_basis: int, direct: bool) -> torch.nn.Module:
    """The forces output: −dE/dR by autograd, or a direct equivariant vector head."""
    if not direct:
        return spk.atomistic.Forces(energy_key="energy", force_key="forces")
    sys.path.insert(0, str(ROOT))  # the head's class must be importable where the model loads
    from mdgate.potentials.direct import DirectForces

    return DirectForces(n_in=n_atom_basis, output_key="forces")


def count_parameters(model: torch.nn.Module) -> int:
    """Return the number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def predict(
    model: torch.nn.Module, frames: list[Frame], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Energies and forces of ``frames`` with the model in eval mode, post-processing as set.

    Args:
        model: a schnetpack potential.
        frames: frames to evaluate.
        batch_size: frames per forward pass.

    Returns:
        ``(energies [n_frames], forces [n_atoms_total, 3])`` as float64 arrays.
    """
    was_training = model.training
    model.eval()
    energies, forces = [], []
    for k in range(0, len(frames), batch_size):
        batch = collate(frames[k : k + batch_size])
        out = model(model_inputs(batch))
        energies.append(out["energy"].detach().double())
        forces.append(out["forces"].detach().double())
    model.train(was_training)
    return torch.cat(energies).numpy(), torch.cat(forces).numpy()


def force_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Force R² over all components (``1 - SS_res/SS_tot``), MAE and RMSE in eV/Å."""
    res = pred - ref
    ss_res = float(np.sum(res**2))
    ss_tot = float(np.sum((ref - ref.mean()) ** 2))
    return {
        "force_r2": 1.0 - ss_res / ss_tot,
        "force_mae_eV_per_A": float(np.mean(np.abs(res))),
        "force_rmse_eV_per_A": float(np.sqrt(np.mean(res**2))),
    }


def evaluate(model: torch.nn.Module, frames: list[Frame], per_molecule: bool = False) -> dict:
    """Metrics of ``model`` (post-processing on, absolute energies) against ``frames``' labels.

    Args:
        model: a schnetpack potential.
        frames: labelled frames.
        per_molecule: also report force R²/MAE and energy MAE per molecule.

    Returns:
        A dict with force R², MAE, RMSE (eV/Å) and energy MAE/RMSE (meV/atom).
    """
    pp = model.do_postprocessing
    model.do_postprocessing = True
    e_pred, f_pred = predict(model, frames)
    model.do_postprocessing = pp
    e_ref = np.array([f.energy for f in frames])
    f_ref = torch.cat([f.forces for f in frames]).double().numpy()
    n = np.array([len(f.numbers) for f in frames])
    de = (e_pred - e_ref) / n * 1000.0
    out = force_metrics(f_pred, f_ref)
    out["energy_mae_meV_per_atom"] = float(np.mean(np.abs(de)))
    out["energy_rmse_meV_per_atom"] = float(np.sqrt(np.mean(de**2)))
    if per_molecule:
        atom_owner = np.repeat(np.arange(len(frames)), n)
        names = [f.name for f in frames]
        table = {}
        for name in dict.fromkeys(names):
            fm = np.array([x == name for x in names])
            am = fm[atom_owner]
            m = force_metrics(f_pred[am], f_ref[am])
            m["energy_mae_meV_per_atom"] = float(np.mean(np.abs(de[fm])))
            table[name] = {k: round(v, 5) for k, v in m.items()}
        out["per_molecule"] = table
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """Hyper-parameters of one training run (written to the JSON metadata)."""

    n_atom_basis: int
    n_interactions: int
    batch_size: int = 16
    lr: float = 1e-3
    lr_min_factor: float = 0.01
    warmup_steps: int = 200
    energy_weight: float = 0.5
    forces_weight: float = 0.5
    max_epochs: int = 1000
    max_minutes: float = 15.0
    val_fraction: float = 0.1
    grad_clip: float = 10.0
    seed: int = 0
    threads: int = 1
    stop_after_epochs: int | None = None
    """End the run after this many epochs of the schedule (an early checkpoint); None: run it out."""
    schedule: str = (
        "linear warm-up, then cosine decay to lr*lr_min_factor over whichever of max_epochs "
        "or max_minutes (wall time) runs out first"
    )
    loss: str = (
        "energy_weight * MSE(energy per atom, eV) + forces_weight * MSE(force components, eV/A)"
    )
    data: str = "GFN2-xTB train.extxyz"


def set_seeds(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Logger:
    """Append lines to a log file and echo them to stdout."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            path.write_text("")

    def __call__(self, line: str) -> None:
        """Write one line."""
        print(line, flush=True)
        with self.path.open("a") as fh:
            fh.write(line + "\n")


def save_model(model: spk.model.NeuralNetworkPotential, path: Path) -> None:
    """Save a float32 copy of ``model`` with post-processing on, atomically, as a full pickle."""
    model.do_postprocessing = True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model, tmp)
    tmp.replace(path)


def train(
    name: str,
    model: spk.model.NeuralNetworkPotential,
    atomrefs: torch.Tensor,
    train_frames: list[Frame],
    val_frames: list[Frame],
    settings: TrainSettings,
    log: Logger,
    resume: bool,
) -> dict:
    """Train ``model`` in place; keep the best-validation weights in ``examples/models/<name>.pt``.

    The learning rate follows a warm-up plus cosine schedule over the progress
    ``max(step / total_steps, elapsed / max_minutes)``; training stops when it reaches 1.
    A full training state is written to ``<STATE_DIR>/<name>.ckpt`` after every epoch.

    Args:
        name: model name (file stem).
        model: the model to train.
        atomrefs: atom reference energies subtracted from the energy targets.
        train_frames: training frames (labels as they should be fitted).
        val_frames: validation frames (model selection by validation force MAE).
        settings: hyper-parameters.
        log: progress logger.
        resume: continue from ``<STATE_DIR>/<name>.ckpt`` if it exists.

    Returns:
        A summary: epochs, steps, wall time, best epoch and its validation metrics.
    """
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    ckpt_path = STATE_DIR / f"{name}.ckpt"
    if not resume:
        ckpt_path.unlink(missing_ok=True)
    best_path = MODEL_DIR / f"{name}.pt"
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps_per_epoch = math.ceil(len(train_frames) / settings.batch_size)
    total_steps = settings.max_epochs * steps_per_epoch
    budget_s = settings.max_minutes * 60.0
    rng = np.random.default_rng(settings.seed)
    epoch, step, elapsed_before = 0, 0, 0.0
    best = {"val_force_mae": float("inf"), "epoch": 0}
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, step, elapsed_before = state["epoch"], state["step"], state["elapsed_s"]
        best = state["best"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log(f"# resumed from {ckpt_path} at epoch {epoch}, {elapsed_before:.0f} s elapsed")
    # Validation batches are fixed; training batches are re-drawn each epoch from the
    # pre-built frame tensors (collating is cheap next to a force-training step).
    val_batches = [
        collate(val_frames[k : k + 64], atomrefs) for k in range(0, len(val_frames), 64)
    ]
    t_start = time.perf_counter() - elapsed_before

    def progress() -> float:
        return max(step / total_steps, (time.perf_counter() - t_start) / budget_s)

    def lr_at() -> float:
        p = min(progress(), 1.0)
        lr_min = settings.lr * settings.lr_min_factor
        lr = lr_min + 0.5 * (settings.lr - lr_min) * (1.0 + math.cos(math.pi * p))
        if step < settings.warmup_steps:
            lr *= (step + 1) / settings.warmup_steps
        return lr

    if epoch == 0:
        log(
            "# epoch  wall_s  lr  train_loss  train_E_mae_meV/atom  train_F_mae  "
            "val_F_mae_eV/A  val_F_r2  val_E_mae_meV/atom  best"
        )
    model.do_postprocessing = False
    model.train()
    while progress() < 1.0:
        if settings.stop_after_epochs is not None and epoch >= settings.stop_after_epochs:
            log(f"# early checkpoint: stopping after epoch {epoch} of the {settings.max_epochs}-epoch schedule")
            break
        epoch += 1
        order = rng.permutation(len(train_frames))
        loss_sum, e_abs, f_abs, n_frames_seen, n_comp = 0.0, 0.0, 0.0, 0, 0
        for k in range(0, len(order), settings.batch_size):
            batch = collate([train_frames[i] for i in order[k : k + settings.batch_size]], atomrefs)
            for g in opt.param_groups:
                g["lr"] = lr_at()
            out = model(model_inputs(batch))
            n = batch[P.n_atoms].to(torch.float32)
            de = (out["energy"] - batch["energy_target"].to(torch.float32)) / n
            df = out["forces"] - batch["forces_target"]
            loss = settings.energy_weight * torch.mean(de**2) + settings.forces_weight * torch.mean(
                df**2
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            step += 1
            nb = len(n)
            loss_sum += float(loss.detach()) * nb
            e_abs += float(de.detach().abs().sum())
            f_abs += float(df.detach().abs().sum())
            n_frames_seen += nb
            n_comp += df.numel()
            if progress() >= 1.0:
                break
        # validation (forces need autograd w.r.t. positions, but no graph for parameters)
        model.eval()
        ve, vf_pred, vf_ref = [], [], []
        for vb in val_batches:
            vo = model(model_inputs(vb))
            ve.append(
                ((vo["energy"].detach().double() - vb["energy_target"]) / vb[P.n_atoms]).abs()
            )
            vf_pred.append(vo["forces"].detach().double())
            vf_ref.append(vb["forces_target"].double())
        model.train()
        vm = force_metrics(torch.cat(vf_pred).numpy(), torch.cat(vf_ref).numpy())
        val_e = float(torch.cat(ve).mean()) * 1000.0
        wall = time.perf_counter() - t_start
        improved = vm["force_mae_eV_per_A"] < best["val_force_mae"]
        if improved:
            best = {
                "val_force_mae": vm["force_mae_eV_per_A"],
                "val_force_r2": vm["force_r2"],
                "val_energy_mae_meV_per_atom": val_e,
                "epoch": epoch,
            }
            save_model(model, best_path)
            model.do_postprocessing = False
        log(
            f"{epoch:5d} {wall:8.1f} {opt.param_groups[0]['lr']:.2e} "
            f"{loss_sum / n_frames_seen:.5f} {e_abs / n_frames_seen * 1000:8.2f} "
            f"{f_abs / n_comp:.4f} {vm['force_mae_eV_per_A']:.4f} {vm['force_r2']:.5f} "
            f"{val_e:8.2f} {'*' if improved else ''}"
        )
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch,
            "step": step,
            "elapsed_s": wall,
            "best": best,
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }
        try:  # a lost training state must not end the run: the best model is already saved
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, ckpt_path.with_suffix(".tmp"))
            ckpt_path.with_suffix(".tmp").replace(ckpt_path)
        except OSError as e:
            log(f"# warning: could not write the training state {ckpt_path}: {e}")
    wall = time.perf_counter() - t_start
    log(f"# stopped after {epoch} epochs, {step} steps, {wall:.0f} s; best epoch {best['epoch']}")
    return {"epochs": epoch, "steps": step, "wall_time_s": round(wall, 1), "best": best}


def finish(
    name: str,
    settings: TrainSettings,
    summary: dict,
    reference: list[Frame],
    parent: str | None,
    extra: dict | None = None,
    reference_path: str | Path = REFERENCE_PATH,
) -> dict:
    """Evaluate the saved best model on the reference set and write ``<name>.json``.

    Args:
        name: model name.
        settings: the training settings.
        summary: what :func:`train` returned.
        reference: the held-out GFN2-xTB reference frames.
        parent: teacher name for distilled students, else ``None``.
        extra: more fields for the JSON (e.g. compression ratio).
        reference_path: the file ``reference`` was read from.

    Returns:
        The metadata dict written.
    """
    path = MODEL_DIR / f"{name}.pt"
    model = spk.utils.load_model(str(path))
    metrics = evaluate(model, reference, per_molecule=True)
    meta = {
        "name": name,
        "file": path.name,
        "architecture": "schnetpack PaiNN",
        "n_atom_basis": settings.n_atom_basis,
        "n_interactions": settings.n_interactions,
        "n_parameters": count_parameters(model),
        "cutoff_A": CUTOFF_A,
        "energy_unit": "eV",
        "position_unit": "Angstrom",
        "energy_key": "energy",
        "forces_key": "forces",
        "level_of_theory": LEVEL_OF_THEORY,
        "parent": parent,
        **(extra or {}),
        "reference_set": os.path.relpath(Path(reference_path).resolve(), ROOT),
        "reference_metrics": {k: v for k, v in metrics.items() if k != "per_molecule"},
        "reference_metrics_per_molecule": metrics["per_molecule"],
        "epochs": summary["epochs"],
        "best_epoch": summary["best"]["epoch"],
        "steps": summary["steps"],
        "wall_time_s": summary["wall_time_s"],
        "validation_at_best": summary["best"],
        "training": asdict(settings),
        "torch_version": torch.__version__,
        "schnetpack_version": spk.__version__,
    }
    (MODEL_DIR / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def student_architecture(compression: float, teacher_params: int) -> tuple[int, int]:
    """Pick the PaiNN width/depth whose parameter count is closest to teacher / compression.

    Depth is 3 interactions (as the teacher) while the width stays >= 32, else 2.

    Args:
        compression: wanted ratio of teacher to student parameters.
        teacher_params: the teacher's parameter count.

    Returns:
        ``(n_atom_basis, n_interactions)``.
    """
    target = teacher_params / compression
    zeros = torch.zeros(100)
    best: tuple[float, int, int] | None = None
    for n_int in (3, 2):
        for width in range(8, 129):
            if n_int == 3 and width < 32:
                continue
            n = count_parameters(build_model(width, n_int, zeros))
            err = abs(math.log(n / target))
            if best is None or err < best[0]:
                best = (err, width, n_int)
        if best is not None and best[0] < 0.05:
            break
    assert best is not None
    return best[1], best[2]


def perturbed(frames: list[Frame], sigma: float, seed: int) -> list[Frame]:
    """Copies of ``frames`` with Gaussian position noise (labels to be filled in later)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for f in frames:
        pos = f.positions + sigma * torch.randn(f.positions.shape, generator=gen)
        out.append(Frame(f.name, f.numbers, pos, 0.0, torch.zeros_like(f.forces)))
    return out


def relabel(teacher: torch.nn.Module, frames: list[Frame]) -> list[Frame]:
    """Return copies of ``frames`` labelled with the teacher's absolute energies and forces."""
    teacher.do_postprocessing = True
    energies, forces = predict(teacher, frames)
    out, start = [], 0
    for f, e in zip(frames, energies, strict=True):
        n = len(f.numbers)
        fr = torch.as_tensor(forces[start : start + n], dtype=torch.float32)
        out.append(Frame(f.name, f.numbers, f.positions, float(e), fr, f.idx_i, f.idx_j))
        start += n
    return out


def run(args: argparse.Namespace) -> None:
    """Train one model as asked on the command line and write its files."""
    global MODEL_DIR, STATE_DIR
    MODEL_DIR = Path(args.model_dir).resolve()
    STATE_DIR = Path(args.state_dir).resolve()
    torch.set_num_threads(args.threads)
    set_seeds(args.seed)
    reference = load_frames(Path(args.reference))
    train_frames, val_frames = [], []
    for path in args.train:  # each file split on its own: every file's last frames validate
        tr, va = split_train_val(load_frames(Path(path)), args.val_fraction)
        train_frames += tr
        val_frames += va
    atomrefs = fit_atomrefs(train_frames)
    parent, extra = None, {}
    epochs = args.max_epochs or 10_000
    if args.command == "small":
        name = args.name or "painn_small"
        width, depth = args.n_atom_basis or 32, args.n_interactions or 3
        minutes = args.max_minutes or 14.0
    elif args.command == "teacher":
        name = args.name or TEACHER_NAME
        width, depth = args.n_atom_basis or 128, args.n_interactions or 3
        minutes = args.max_minutes or 45.0
    else:
        name = args.name or f"student_{args.compression:g}x" + (
            "_direct" if args.direct_forces else ""
        ) + (f"_epoch{args.stop_after_epochs}" if args.stop_after_epochs else "")
        teacher_path = Path(args.teacher)
        teacher = spk.utils.load_model(str(teacher_path))
        teacher_params = count_parameters(teacher)
        if args.n_atom_basis and args.n_interactions:
            width, depth = args.n_atom_basis, args.n_interactions
        else:
            width, depth = student_architecture(args.compression, teacher_params)
        # Students get the same number of optimizer steps (10 epochs of the distillation set,
        # about 10 minutes for the 2x student on an idle core), so that a busy machine does not
        # shorten one student's training more than another's; 30 minutes is only a safety cap.
        minutes = args.max_minutes or 30.0
        epochs = args.max_epochs or 10
        parent = teacher_path.stem
        # Teacher-labelled training geometries plus teacher-labelled perturbed copies.
        distill = relabel(teacher, train_frames)
        for k in range(args.n_perturbed):
            distill += relabel(
                teacher, perturbed(train_frames, args.perturb_sigma, args.seed + 100 + k)
            )
        if args.xtb_copies:
            distill += train_frames * args.xtb_copies
        extra = {
            "teacher_file": os.path.relpath(teacher_path.resolve(), ROOT),
            "teacher_parameters": teacher_params,
            "parent_n_parameters": teacher_params,
            "compression_target": args.compression,
            "distillation": {
                "teacher_labelled_train_geometries": len(train_frames),
                "teacher_labelled_perturbed_geometries": args.n_perturbed * len(train_frames),
                "perturbation_sigma_A": args.perturb_sigma,
                "xtb_labelled_copies": args.xtb_copies * len(train_frames),
                "validation_labels": "GFN2-xTB (held-out block of train.extxyz)",
            },
        }
        train_frames = distill
    if args.direct_forces:
        extra["forces_from"] = (
            "direct: gated equivariant vector head on PaiNN's vector features "
            "(mdgate.potentials.direct.DirectForces), not -dE/dR"
        )
    if args.stop_after_epochs:
        extra["early_checkpoint"] = {
            "stopped_after_epochs": args.stop_after_epochs,
            "scheduled_epochs": epochs,
            "note": "the model after the first epochs of the schedule, not the finished run",
        }
    settings = TrainSettings(
        n_atom_basis=width,
        n_interactions=depth,
        batch_size=args.batch_size,
        lr=args.lr,
        energy_weight=args.energy_weight,
        forces_weight=1.0 - args.energy_weight,
        max_epochs=epochs,
        max_minutes=minutes,
        val_fraction=args.val_fraction,
        seed=args.seed,
        threads=args.threads,
        stop_after_epochs=args.stop_after_epochs,
        data=(
            "GFN2-xTB " + " + ".join(Path(t).name for t in args.train)
            if args.command != "student"
            else "teacher-labelled train.extxyz geometries (+ perturbed copies)"
        ),
    )
    set_seeds(args.seed)
    model = build_model(width, depth, atomrefs, direct_forces=args.direct_forces)
    n_params = count_parameters(model)
    if args.command == "student":
        extra["compression_ratio"] = round(extra["teacher_parameters"] / n_params, 3)
    log = Logger(MODEL_DIR / f"{name}.log", append=args.resume)
    log(
        f"# {name}: PaiNN n_atom_basis={width} n_interactions={depth} params={n_params} "
        f"train={len(train_frames)} val={len(val_frames)} reference={len(reference)} "
        f"settings={json.dumps(asdict(settings))}"
    )
    if extra:
        log(f"# {json.dumps(extra)}")
    summary = train(name, model, atomrefs, train_frames, val_frames, settings, log, args.resume)
    meta = finish(name, settings, summary, reference, parent, extra, args.reference)
    rm = meta["reference_metrics"]
    log(
        f"# reference: force R2 {rm['force_r2']:.4f}  force MAE {rm['force_mae_eV_per_A']:.4f} "
        f"eV/A  force RMSE {rm['force_rmse_eV_per_A']:.4f} eV/A  energy MAE "
        f"{rm['energy_mae_meV_per_atom']:.2f} meV/atom  params {meta['n_parameters']}"
    )


def table(model_dir: Path) -> str:
    """Return a Markdown table of the figures in the ``*.json`` files of ``model_dir``.

    Args:
        model_dir: folder with ``<name>.json`` files written by this script.

    Returns:
        The table, one row per model (small, teacher, then students by compression).
    """
    metas = [json.loads(p.read_text()) for p in sorted(model_dir.glob("*.json"))]
    metas = [m for m in metas if "reference_metrics" in m]
    teacher = next((m for m in metas if m["name"] == TEACHER_NAME), None)
    metas.sort(key=lambda m: (m["parent"] is not None, -m["n_parameters"]))
    rows = [
        "| model | PaiNN (width × interactions) | parameters | compression vs teacher | epochs "
        "| steps | wall time (min) | force R² | force MAE (eV/Å) | force RMSE (eV/Å) "
        "| energy MAE (meV/atom) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in metas:
        rm = m["reference_metrics"]
        ratio = f"{teacher['n_parameters'] / m['n_parameters']:.2f}×" if teacher else "-"
        rows.append(
            f"| `{m['file']}` | {m['n_atom_basis']} × {m['n_interactions']} "
            f"| {m['n_parameters']:,} | {ratio} | {m['epochs']} | {m['steps']} "
            f"| {m['wall_time_s'] / 60:.1f} "
            f"| {rm['force_r2']:.4f} | {rm['force_mae_eV_per_A']:.4f} "
            f"| {rm['force_rmse_eV_per_A']:.4f} | {rm['energy_mae_meV_per_atom']:.2f} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        choices=["small", "teacher", "student", "table"],
        help="model to train, or 'table' to print the figures of the trained models",
    )
    parser.add_argument("--compression", type=float, default=2.0, help="student: ratio (2, 5, 20)")
    parser.add_argument("--teacher", default=str(MODEL_DIR / f"{TEACHER_NAME}.pt"))
    parser.add_argument("--name", help="output file stem (default per command)")
    parser.add_argument("--n-atom-basis", type=int)
    parser.add_argument("--n-interactions", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--energy-weight", type=float, default=0.5,
                        help="weight of the per-atom energy MSE; forces get 1 - this")
    parser.add_argument("--max-epochs", type=int,
                        help="epoch budget (default: student 10, else 10000, i.e. time-limited)")
    parser.add_argument("--max-minutes", type=float,
                        help="wall-time budget (default: small 14, teacher 45, student 30 as a cap)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--n-perturbed", type=int, default=1,
                        help="student: perturbed copies of each training geometry")
    parser.add_argument("--perturb-sigma", type=float, default=0.03,
                        help="student: Gaussian position noise in Å")
    parser.add_argument("--xtb-copies", type=int, default=0,
                        help="student: also train on the xTB-labelled frames this many times")
    parser.add_argument("--direct-forces", action="store_true",
                        help="forces from an equivariant vector head instead of -dE/dR (same "
                             "width and depth as the autograd model)")
    parser.add_argument("--stop-after-epochs", type=int,
                        help="end after this many epochs of the (unchanged) schedule: an early "
                             "checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true",
                        help="continue from <state-dir>/<name>.ckpt")
    parser.add_argument("--state-dir", default=str(STATE_DIR),
                        help="where the resumable training state is kept")
    parser.add_argument("--model-dir", default=str(MODEL_DIR), help="where to write the model files")
    parser.add_argument("--train", nargs="+", default=[str(TRAIN_PATH)],
                        help="training extxyz file(s); each one's last --val-fraction per molecule validates")
    parser.add_argument("--reference", default=str(REFERENCE_PATH))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    if args.command == "table":
        print(table(Path(args.model_dir)))
    else:
        run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
