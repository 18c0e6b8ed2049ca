"""schnetpack models as potentials: forces are −dE/dR, units come from the metadata, bad
outputs are named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import units as ase_units

from mdgate.errors import MetadataError, ModelInterfaceError
from mdgate.md.neighbors import NeighborList, all_pairs
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import SchnetpackPotential, load_potential
from tests.models import NonConservativeModel, build_painn


def evaluate(pot: SchnetpackPotential, mols: list[Molecule], positions: np.ndarray | None = None):
    numbers = torch.as_tensor(np.concatenate([m.atoms.numbers for m in mols]))
    pos = positions if positions is not None else np.concatenate([m.atoms.positions for m in mols])
    sys_idx = torch.as_tensor(np.repeat(np.arange(len(mols)), [len(m.atoms) for m in mols]))
    i, j = all_pairs(sys_idx)
    e, f = pot(numbers, torch.as_tensor(pos, dtype=torch.float64), sys_idx, len(mols), i, j)
    return e.numpy(), f.numpy()


def finite_difference_forces(pot: SchnetpackPotential, mol: Molecule, h: float = 1e-4) -> np.ndarray:
    x0 = mol.atoms.positions.copy()
    fd = np.zeros_like(x0)
    for a in range(len(x0)):
        for k in range(3):
            xp, xm = x0.copy(), x0.copy()
            xp[a, k] += h
            xm[a, k] -= h
            fd[a, k] = -(evaluate(pot, [mol], xp)[0][0] - evaluate(pot, [mol], xm)[0][0]) / (2 * h)
    return fd


@pytest.fixture(scope="module")
def ethanol(packaged_molecules: list[Molecule]) -> Molecule:
    return next(m for m in packaged_molecules if m.name == "ethanol")


def test_loaded_model_facts(untrained_model_path: Path) -> None:
    pot = load_potential(untrained_model_path, device="cpu")
    model = torch.load(untrained_model_path, weights_only=False)
    assert pot.n_parameters == sum(p.numel() for p in model.parameters())
    assert pot.cutoff_A == pytest.approx(5.0)  # read from the model's cutoff function
    assert pot.dtype == torch.float32 and pot.device == torch.device("cpu")


def test_forces_are_minus_the_energy_gradient(ethanol: Molecule) -> None:
    pot = SchnetpackPotential(build_painn(16, 2).double(), ModelMeta())
    _, forces = evaluate(pot, [ethanol])
    np.testing.assert_allclose(forces, finite_difference_forces(pot, ethanol), atol=1e-6)
    assert np.abs(forces).max() > 0.1


def test_the_non_conservative_wrapper_is_not_a_gradient(ethanol: Molecule) -> None:
    """The test model for energy drift really has forces that are not −dE/dR."""
    pot = SchnetpackPotential(NonConservativeModel(build_painn(16, 2).double(), 0.05), ModelMeta())
    _, forces = evaluate(pot, [ethanol])
    diff = forces - finite_difference_forces(pot, ethanol)
    rel = ethanol.atoms.positions - ethanol.atoms.positions.mean(axis=0)
    np.testing.assert_allclose(diff, 0.05 * np.cross([0.0, 0.0, 1.0], rel), atol=1e-6)
    # Its torque about the z axis spins molecules up.
    assert np.cross(rel, diff)[:, 2].sum() > 0


def test_units_come_from_the_metadata(ethanol: Molecule) -> None:
    model = build_painn(16, 2).double()
    e_ev, f_ev = evaluate(SchnetpackPotential(model, ModelMeta()), [ethanol])
    kcal = ase_units.kcal / ase_units.mol
    e_kc, f_kc = evaluate(SchnetpackPotential(model, ModelMeta(energy_unit="kcal/mol")), [ethanol])
    np.testing.assert_allclose(e_kc, e_ev * kcal, rtol=1e-12)
    np.testing.assert_allclose(f_kc, f_ev * kcal, rtol=1e-12)
    # A model in Bohr sees the molecule in Bohr; its forces come back per Å.
    pot_bohr = SchnetpackPotential(model, ModelMeta(position_unit="Bohr"))
    e_b, f_b = evaluate(pot_bohr, [ethanol])
    e_direct, f_direct = evaluate(SchnetpackPotential(model, ModelMeta()), [ethanol],
                                  ethanol.atoms.positions / ase_units.Bohr)
    np.testing.assert_allclose(e_b, e_direct, rtol=1e-12)
    np.testing.assert_allclose(f_b, f_direct / ase_units.Bohr, rtol=1e-12)
    with pytest.raises(MetadataError, match="unknown energy unit 'kcal'"):
        SchnetpackPotential(model, ModelMeta(energy_unit="kcal"))


def test_batched_energies_match_single_molecules(packaged_molecules: list[Molecule]) -> None:
    pot = SchnetpackPotential(build_painn(16, 2).double(), ModelMeta())
    mols = packaged_molecules[:3]
    e_batch, f_batch = evaluate(pot, mols)
    start = 0
    for k, m in enumerate(mols):
        e, f = evaluate(pot, [m])
        assert e_batch[k] == pytest.approx(e[0], abs=1e-10)
        np.testing.assert_allclose(f_batch[start:start + len(m.atoms)], f, atol=1e-10)
        start += len(m.atoms)


def test_cutoff_neighbour_list_with_skin_gives_the_all_pairs_result(
        packaged_molecules: list[Molecule]) -> None:
    pot = SchnetpackPotential(build_painn(16, 2).double(), ModelMeta())
    mol = next(m for m in packaged_molecules if m.name == "azobenzene")  # longer than the 5 Å cutoff
    sys_idx = torch.zeros(len(mol.atoms), dtype=torch.long)
    x = torch.as_tensor(mol.atoms.positions)
    nl = NeighborList(sys_idx, pot.cutoff_A, skin_A=1.0)
    i, j = nl.update(x)
    assert len(i) < len(all_pairs(sys_idx)[0])  # some pairs really are beyond cutoff + skin
    e_nl, f_nl = pot(torch.as_tensor(mol.atoms.numbers), x, sys_idx, 1, i, j)
    e_all, f_all = evaluate(pot, [mol])
    assert float(e_nl[0]) == pytest.approx(e_all[0], abs=1e-10)
    np.testing.assert_allclose(f_nl.numpy(), f_all, atol=1e-10)


class _WrongShape(torch.nn.Module):
    def forward(self, inputs: dict) -> dict:
        n = inputs["_positions"].shape[0]
        return {"energy": torch.zeros(n), "forces": torch.zeros(n, 3)}


def test_outputs_of_the_wrong_shape_are_named(ethanol: Molecule) -> None:
    pot = SchnetpackPotential(_WrongShape(), ModelMeta())
    with pytest.raises(ModelInterfaceError, match=r"energy output 'energy' has shape \(9,\), expected \[1\]"):
        evaluate(pot, [ethanol])
    with pytest.raises(ModelInterfaceError, match="no forces output 'frc'"):
        evaluate(SchnetpackPotential(build_painn(8, 1), ModelMeta(forces_key="frc")), [ethanol])


def test_threads_sharing_one_potential_each_get_their_own_molecules_inputs(
        untrained_model_path, packaged_molecules) -> None:
    """The gate runs its per-molecule MD tasks in threads of one process, all calling one loaded
    potential. Molecules of different sizes called side by side must give the energies each gives
    alone (inputs cached per batch once leaked between threads: a size-mismatch error, or worse).
    """
    import threading

    pot = load_potential(untrained_model_path, device="cpu")

    def call_args(mol):
        system_idx = torch.zeros(len(mol.atoms), dtype=torch.long)
        x = torch.tensor(mol.atoms.positions)
        i, j = NeighborList(system_idx, pot.cutoff_A, 0.0).update(x)
        return torch.tensor(mol.atoms.numbers), x, system_idx, 1, i, j

    batches = [call_args(m) for m in packaged_molecules]
    alone = [float(pot(*b)[0]) for b in batches]
    problems: list[str] = []

    def hammer(k: int) -> None:
        try:
            for _ in range(100):
                energy = float(pot(*batches[k])[0])
                if abs(energy - alone[k]) > 1e-6:
                    problems.append(f"{packaged_molecules[k].name}: {energy} != {alone[k]}")
                    return
        except Exception as e:  # the failure this guards against is an exception in a thread
            problems.append(f"{packaged_molecules[k].name}: {e!r}")

    threads = [threading.Thread(target=hammer, args=(k % len(batches),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems


def test_a_pickled_potential_leaves_its_per_process_state_behind(untrained_model_path, packaged_molecules) -> None:
    """Dask tasks receive the potential pickled: it arrives without the sender's cached inputs
    or compile owner, and computes the same energies.
    """
    import pickle

    pot = load_potential(untrained_model_path, device="cpu")
    mol = packaged_molecules[0]
    system_idx = torch.zeros(len(mol.atoms), dtype=torch.long)
    x = torch.tensor(mol.atoms.positions)
    i, j = NeighborList(system_idx, pot.cutoff_A, 0.0).update(x)
    args = (torch.tensor(mol.atoms.numbers), x, system_idx, 1, i, j)
    energy = float(pot(*args)[0])
    pot.request_compile()
    pot._compile_pending = False  # asked, not done: only the owner thread is recorded
    copy = pickle.loads(pickle.dumps(pot))
    assert pot._static_cache and not copy._static_cache
    assert "_compile_requested_by" not in copy.__dict__
    assert float(copy(*args)[0]) == pytest.approx(energy, abs=1e-9)
