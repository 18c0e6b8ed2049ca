"""The demo's two students made to fail (scripts/train_models.py): a student whose forces come from
an equivariant vector head (``mdgate.potentials.direct``) and an early checkpoint of the 20x
student. The direct-force model loads through the schnetpack adapter, its forces rotate with the
molecule, and they are not −dE/dR: the sanity stage's finite-difference check says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import schnetpack as spk
import torch

from mdgate.config import SanitySettings
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta
from mdgate.potentials.direct import DirectForces
from mdgate.potentials.predict import predict
from mdgate.potentials.schnetpack import load_potential
from mdgate.stages.sanity import measure_molecule, run_sanity
from tests.models import CUTOFF_A, N_RBF

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"
DIRECT = MODELS / "student_5x_direct.pt"
EARLY = MODELS / "student_20x_epoch1.pt"


def build_direct(n_atom_basis: int = 16, n_interactions: int = 2, seed: int = 0) -> spk.model.NeuralNetworkPotential:
    """An untrained PaiNN with an energy head and a direct force head (no ``Forces`` module)."""
    torch.manual_seed(seed)
    return spk.model.NeuralNetworkPotential(
        representation=spk.representation.PaiNN(
            n_atom_basis=n_atom_basis, n_interactions=n_interactions,
            radial_basis=spk.nn.GaussianRBF(n_rbf=N_RBF, cutoff=CUTOFF_A), cutoff_fn=spk.nn.CosineCutoff(CUTOFF_A)),
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=n_atom_basis, output_key="energy"),
                        DirectForces(n_in=n_atom_basis, output_key="forces")],
        postprocessors=[spk.transform.CastTo64()],
    )


def _molecule(molecules: list[Molecule], name: str) -> Molecule:
    return next(m for m in molecules if m.name == name)


def test_a_direct_force_model_loads_and_its_forces_are_not_the_energy_gradient(
        tmp_path: Path, packaged_molecules: list[Molecule]) -> None:
    path = tmp_path / "direct.pt"
    torch.save(build_direct(), path)
    pot = load_potential(path, ModelMeta(), device="cpu")
    mol = _molecule(packaged_molecules, "ethanol")
    z, x = mol.atoms.numbers, mol.atoms.positions
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(4, len(z), 3))
    dirs /= np.linalg.norm(dirs.reshape(4, -1), axis=1)[:, None, None]
    h = 1e-2
    structures = [(z, x)] + [(z, x + s * h * d) for d in dirs for s in (1, -1)]
    energies, forces = predict(pot, structures)
    assert forces[0].shape == (len(z), 3) and np.isfinite(forces[0]).all()
    fd = (energies[1::2] - energies[2::2]) / (2 * h)  # dE/ds along each direction
    proj = -np.einsum("dij,ij->d", dirs, forces[0])  # what a conservative model's forces give
    assert np.sqrt(np.mean((fd - proj) ** 2)) > 0.5 * np.sqrt(np.mean(proj**2))
    # the head is equivariant: rotating the molecule rotates the forces
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    _, [f_rot] = predict(pot, [(z, x @ q.T)])
    np.testing.assert_allclose(f_rot, forces[0] @ q.T, atol=1e-4)


@pytest.mark.skipif(not DIRECT.is_file(), reason="examples/models/student_5x_direct.pt not trained")
def test_the_direct_force_student_fails_the_finite_difference_check(packaged_molecules: list[Molecule]) -> None:
    meta = ModelMeta.model_validate(json.loads(DIRECT.with_suffix(".json").read_text()))
    pot = load_potential(DIRECT, meta, device="cpu")
    settings = SanitySettings()
    mol = _molecule(packaged_molecules, "ethanol")
    figures = measure_molecule(pot, mol, settings)
    bound = settings.criteria.fd_force_error_relative.bound
    assert figures["fd_force_error_relative"] > 10 * bound, figures
    # no BFGS on forces that are not a gradient (it cannot converge: minutes for nothing)
    assert figures["relax_steps"] == 0 and figures["relax_rmsd_A"] is None
    assert figures["force_rotation_error_eV_per_A"] <= settings.criteria.force_rotation_error_eV_per_A.bound
    _, checks = run_sanity(pot, [mol], settings)
    by_name = {c.name: c for c in checks[mol.name]}
    assert by_name["fd_force_error_relative"].passed is False
    assert by_name["force_rotation_error_eV_per_A"].passed is True


@pytest.mark.skipif(not EARLY.is_file(), reason="examples/models/student_20x_epoch1.pt not trained")
def test_the_early_checkpoint_is_the_20x_student_after_one_of_its_ten_epochs() -> None:
    early = json.loads(EARLY.with_suffix(".json").read_text())
    full = json.loads((MODELS / "student_20x.json").read_text())
    assert early["early_checkpoint"]["stopped_after_epochs"] == early["epochs"] == 1
    assert early["early_checkpoint"]["scheduled_epochs"] == full["epochs"] == 10
    assert early["n_parameters"] == full["n_parameters"]
    assert early["reference_metrics"]["force_r2"] < full["reference_metrics"]["force_r2"]
    pot = load_potential(EARLY, ModelMeta.model_validate(early), device="cpu")
    assert pot.n_parameters == full["n_parameters"]
