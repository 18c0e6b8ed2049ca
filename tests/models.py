"""Potentials and model wrappers for the tests, importable as ``tests.models``.

Wrapped models are pickled with ``torch.save`` and loaded back by the engine (also in a CLI
subprocess, which needs the repository root on ``PYTHONPATH``), so every class here lives at
module level.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import schnetpack as spk
import torch
from ase import Atoms
from torch import nn

#: The small PaiNN trained by scripts/train_models.py (committed with its JSON metadata).
GOOD_MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "painn_small.pt"
#: Cutoff and radial basis of the project's PaiNN models (scripts/train_models.py).
CUTOFF_A = 5.0
N_RBF = 20
#: Metadata of the models the tests build (as scripts/train_models.py writes it).
MODEL_META = {"energy_unit": "eV", "position_unit": "Angstrom", "energy_key": "energy",
              "forces_key": "forces", "cutoff_A": CUTOFF_A, "level_of_theory": "GFN2-xTB"}


def save_model(model: nn.Module, path: Path, meta: dict | None = None) -> Path:
    """``torch.save`` a whole module, with a ``<stem>.json`` metadata sidecar when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def fit_atomrefs(frames: list[Atoms], zmax: int = 100) -> torch.Tensor:
    """Per-element reference energies (eV) fitted by least squares to the frames' energies.

    Returns:
        ``[zmax]`` float64 tensor; elements absent from ``frames`` stay 0.
    """
    elements = sorted({int(z) for a in frames for z in a.numbers})
    counts = np.array([[np.sum(a.numbers == z) for z in elements] for a in frames], dtype=float)
    energies = np.array([a.get_potential_energy() for a in frames])
    coef, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    atomrefs = torch.zeros(zmax, dtype=torch.float64)
    for z, c in zip(elements, coef, strict=True):
        atomrefs[z] = float(c)
    return atomrefs


def build_painn(
    n_atom_basis: int = 16,
    n_interactions: int = 2,
    atomrefs: torch.Tensor | None = None,
    forces: bool = True,
    seed: int = 0,
) -> spk.model.NeuralNetworkPotential:
    """An untrained schnetpack PaiNN potential with the architecture of the project's models.

    Args:
        n_atom_basis: feature width.
        n_interactions: interaction blocks.
        atomrefs: ``[100]`` atom reference energies (eV) added by ``AddOffsets``, if given.
        forces: include the ``Forces`` output module (``False``: energy only).
        seed: torch seed for the initial weights.
    """
    torch.manual_seed(seed)
    representation = spk.representation.PaiNN(
        n_atom_basis=n_atom_basis,
        n_interactions=n_interactions,
        radial_basis=spk.nn.GaussianRBF(n_rbf=N_RBF, cutoff=CUTOFF_A),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF_A),
    )
    outputs: list[nn.Module] = [spk.atomistic.Atomwise(n_in=n_atom_basis, output_key="energy")]
    if forces:
        outputs.append(spk.atomistic.Forces(energy_key="energy", force_key="forces"))
    post: list[nn.Module] = [spk.transform.CastTo64()]
    if atomrefs is not None:
        post.append(spk.transform.AddOffsets(
            "energy", add_mean=False, add_atomrefs=True, atomrefs=atomrefs.to(torch.float64).clone()))
    return spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=outputs,
        postprocessors=post,
    )


def _molecule_centres(positions: torch.Tensor, idx_m: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    centres = torch.zeros((n_atoms.numel(), 3), dtype=positions.dtype, device=positions.device)
    centres.index_add_(0, idx_m, positions)
    return centres / n_atoms[:, None].to(positions.dtype)


class NonConservativeModel(nn.Module):
    """A schnetpack model whose forces get an extra rotational (curl) field.

    Each atom feels ``strength · ẑ × (r − c)`` with ``c`` the geometric centre of its molecule:
    a force field with non-zero curl, so no energy has it as its gradient. The energy output is
    the wrapped model's, unchanged. The field applies a torque that spins the molecule up,
    so the total energy of an NVE run grows with time.

    Args:
        model: the wrapped schnetpack ``NeuralNetworkPotential`` (eV, Å).
        strength_eV_per_A2: field strength in eV/Å².
    """

    def __init__(self, model: nn.Module, strength_eV_per_A2: float):
        super().__init__()
        self.model = model
        self.model.do_postprocessing = True
        self.strength_eV_per_A2 = strength_eV_per_A2

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the wrapped model and add the rotational force field to its forces."""
        out = dict(self.model(inputs))
        pos = inputs["_positions"].detach()
        idx_m = inputs["_idx_m"]
        rel = pos - _molecule_centres(pos, idx_m, inputs["_n_atoms"])[idx_m]
        axis = torch.zeros_like(rel)
        axis[:, 2] = 1.0
        curl = self.strength_eV_per_A2 * torch.linalg.cross(axis, rel, dim=1)
        out["forces"] = out["forces"] + curl.to(out["forces"].dtype)
        return out


class NaNModel(nn.Module):
    """A schnetpack model whose energies and forces are all NaN (a numerically broken model)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.model.do_postprocessing = True

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the wrapped model and replace every output by NaN."""
        out = self.model(inputs)
        return {k: torch.full_like(v, float("nan")) for k, v in out.items()}


class MorsePairPotential:
    """A conservative Morse pair potential satisfying :class:`mdgate.potentials.Potential`.

    The pair energy is ASE's (``ase.calculators.morse.MorsePotential`` without its smooth
    cutoff): ``ε (exp(−2ρ0 (r/r0 − 1)) − 2 exp(−ρ0 (r/r0 − 1)))``. Forces are −dE/dR by autograd.

    Optionally pairs of atoms that both have atomic number ``pull_z`` also feel a constant
    separating force ``pull_eV_per_A`` (the energy ``−pull · r``, still conservative): enough
    pull breaks that bond while molecules without such atoms are unaffected.

    Args:
        epsilon_eV: well depth.
        rho0: dimensionless exponent prefactor.
        r0_A: equilibrium distance.
        pull_z: atomic number whose pairs are pulled apart, if any.
        pull_eV_per_A: the pulling force.
        record: keep a float64 CPU copy of the positions of every call in ``calls``.
    """

    cutoff_A = None
    n_parameters = 3

    def __init__(self, epsilon_eV: float = 0.5, rho0: float = 4.0, r0_A: float = 1.5, *,
                 pull_z: int | None = None, pull_eV_per_A: float = 0.0, record: bool = False):
        self.device = torch.device("cpu")
        self.epsilon_eV, self.rho0, self.r0_A = epsilon_eV, rho0, r0_A
        self.pull_z, self.pull_eV_per_A = pull_z, pull_eV_per_A
        self.record = record
        self.calls: list[np.ndarray] = []
        self.n_calls = 0

    def __call__(
        self, numbers: torch.Tensor, positions_A: torch.Tensor, system_idx: torch.Tensor,
        n_systems: int, idx_i: torch.Tensor, idx_j: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies ``[n_systems]`` (eV) and forces ``[n_atoms, 3]`` (eV/Å), float64."""
        self.n_calls += 1
        if self.record:
            self.calls.append(positions_A.detach().cpu().numpy().copy())
        with torch.enable_grad():
            x = positions_A.detach().to(torch.float64).requires_grad_(True)
            d = (x[idx_i] - x[idx_j]).norm(dim=1)
            expf = torch.exp(self.rho0 * (1.0 - d / self.r0_A))
            pair = self.epsilon_eV * expf * (expf - 2.0)
            if self.pull_z is not None:
                pulled = (numbers[idx_i] == self.pull_z) & (numbers[idx_j] == self.pull_z)
                pair = pair - self.pull_eV_per_A * d * pulled.to(d.dtype)
            # Both directions of every pair are listed: each contributes half.
            energy = torch.zeros(n_systems, dtype=torch.float64).index_add(
                0, system_idx[idx_i], 0.5 * pair)
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return energy.detach(), -grad


def tetrahedron(symbols: str, edge_A: float = 1.5, name: str | None = None,
                rattle_A: float = 0.0, seed: int = 0) -> Atoms:
    """A regular tetrahedron of four atoms with all edges ``edge_A`` (a Morse minimum)."""
    s = edge_A / np.sqrt(8.0)
    corners = s * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
    atoms = Atoms(symbols, positions=corners)
    if rattle_A:
        atoms.rattle(rattle_A, seed=seed)
    if name:
        atoms.info["name"] = name
    return atoms


def triangle(symbols: str, edge_A: float = 1.5, name: str | None = None,
             rattle_A: float = 0.0, seed: int = 0) -> Atoms:
    """An equilateral triangle of three atoms with all edges ``edge_A`` (a Morse minimum)."""
    corners = edge_A * np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]])
    atoms = Atoms(symbols, positions=corners)
    if rattle_A:
        atoms.rattle(rattle_A, seed=seed)
    if name:
        atoms.info["name"] = name
    return atoms


class HoleModel(nn.Module):
    """A *conservative* schnetpack model with a spurious attractive hole far from equilibrium.

    Pairs of atoms with atomic numbers ``z1`` and ``z2`` get the extra energy
    ``−depth · σ((r_on − r) / width)`` (σ the logistic function): nothing where the pair never
    comes closer than ``r_on + 5·width`` (its energy and forces there equal the wrapped model's
    to below 1e-5 eV/Å), and a well of ``depth`` eV once the pair gets inside ``r_on``. Energy
    and forces stay consistent (forces are −∇ of the total energy by autograd), so NVE energy is
    conserved and the sanity stage sees nothing; only MD that reaches ``r_on`` falls in.

    Args:
        model: the wrapped schnetpack ``NeuralNetworkPotential`` (eV, Å).
        z1, z2: atomic numbers of the pair.
        r_on_A: onset distance of the hole.
        depth_eV: well depth.
        width_A: width of the onset.
    """

    def __init__(self, model: nn.Module, z1: int, z2: int, r_on_A: float, depth_eV: float = 3.0,
                 width_A: float = 0.03):
        super().__init__()
        self.model = model
        self.model.do_postprocessing = True
        self.z1, self.z2, self.r_on_A, self.depth_eV, self.width_A = z1, z2, r_on_A, depth_eV, width_A

    def hole_energy(self, numbers: torch.Tensor, positions: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                    idx_m: torch.Tensor, n_systems: int) -> torch.Tensor:
        """The hole's energy per system (eV), ``[n_systems]``; both pair directions are listed."""
        zi, zj = numbers[idx_i], numbers[idx_j]
        pair = ((zi == self.z1) & (zj == self.z2)) | ((zi == self.z2) & (zj == self.z1))
        r = (positions[idx_j] - positions[idx_i]).norm(dim=1)
        e = -0.5 * self.depth_eV * torch.sigmoid((self.r_on_A - r) / self.width_A) * pair.to(r.dtype)
        return torch.zeros(n_systems, dtype=r.dtype, device=r.device).index_add(0, idx_m[idx_i], e)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the wrapped model and add the hole's energy and its forces."""
        out = dict(self.model(inputs))
        with torch.enable_grad():
            pos = inputs["_positions"].detach().to(torch.float64).requires_grad_(True)
            e = self.hole_energy(inputs["_atomic_numbers"], pos, inputs["_idx_i"], inputs["_idx_j"],
                                 inputs["_idx_m"], int(inputs["_n_atoms"].numel()))
            (grad,) = torch.autograd.grad(e.sum(), pos)
        out["energy"] = out["energy"] + e.detach().to(out["energy"].dtype)
        out["forces"] = out["forces"] - grad.to(out["forces"].dtype)
        return out


#: Short heat-stress and oracle stages for tests of other things (the default protocol runs
#: 4000 stress steps × 3 replicas per molecule): a 0.1 ps ramp, one oracle frame per trajectory.
QUICK_STAGES: dict = {"stress": {"ramp_ps": 0.05, "hold_ps": 0.05}, "oracle": {"frames_per_trajectory": 1},
                      "sanity": {"relax_steps": 50},
                      # The oracle's side stays the packaged one (none of its settings change).
                      "pes": {"relax_max_steps": 30, "contact_max_distance_A": 1.9, "contact_step_A": 0.25}}


def quick(config: dict) -> dict:
    """``config`` with :data:`QUICK_STAGES` for the sections it does not set itself."""
    return {**QUICK_STAGES, **config}


def quick_config_file() -> Path:
    """A gate config YAML holding only :data:`QUICK_STAGES` (for ``mdgate validate --config``)."""
    import tempfile

    import yaml

    path = Path(tempfile.mkdtemp(prefix="mdgate-quick-")) / "quick.yaml"
    path.write_text(yaml.safe_dump(QUICK_STAGES))
    return path
