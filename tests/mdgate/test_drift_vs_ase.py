"""Speed never costs accuracy: on the same schnetpack potential and time step, the batched
engine conserves energy as well as ASE's VelocityVerlet + schnetpack's SpkCalculator.
"""

from __future__ import annotations

import numpy as np
import pytest
import schnetpack as spk
from ase import units
from ase.md.verlet import VelocityVerlet

from mdgate.checks.metrics import drift_slope_meV_per_atom_per_ps
from mdgate.md.batch import run_nve
from mdgate.md.initial import maxwell_boltzmann, replica_seed
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_potential
from tests.conftest import GOOD_MODEL

N_STEPS = 400
TIMESTEP_FS = 0.5


def ase_energies(path: str, atoms, velocities: np.ndarray, n_steps: int) -> np.ndarray:
    """Total energy per step (eV) of ASE velocity Verlet with schnetpack's calculator (eV units)."""
    atoms = atoms.copy()
    atoms.set_velocities(velocities)
    atoms.calc = spk.interfaces.SpkCalculator(
        model=path, neighbor_list=spk.transform.ASENeighborList(cutoff=5.0),
        energy_unit="eV", position_unit="Ang")
    dyn = VelocityVerlet(atoms, TIMESTEP_FS * units.fs)
    energies = [atoms.get_total_energy()]
    for _ in range(n_steps):
        dyn.run(1)
        energies.append(atoms.get_total_energy())
    return np.array(energies)


@pytest.mark.parametrize("name", ["ethanol", "aspirin"])
def test_engine_drift_matches_ase_velocity_verlet(name: str, packaged_molecules) -> None:
    mol = next(m for m in packaged_molecules if m.name == name)
    pot = load_potential(GOOD_MODEL, ModelMeta(), "cpu")
    # The engine, with this molecule in a batch with another one (batching must not matter).
    other = next(m for m in packaged_molecules if m.name == "uracil")
    trajs = run_nve(pot, [mol, other], n_steps=N_STEPS, timestep_fs=TIMESTEP_FS, temperature_K=300.0,
                    record_every=1)
    engine = trajs[0].e_tot_eV
    v0 = maxwell_boltzmann(mol.atoms, 300.0, np.random.default_rng(replica_seed(0, name, 0)))
    ase = ase_energies(str(GOOD_MODEL), mol.atoms, v0, N_STEPS)
    n = len(mol.atoms)
    assert engine.shape == ase.shape
    # Same start: same initial total energy (float32 model, float64 integration).
    assert abs(engine[0] - ase[0]) / n < 1e-5
    # Same fluctuation of E_tot (the Verlet shadow-Hamiltonian wobble) within statistical noise.
    fluct_engine = np.std(engine - engine[0]) / n * 1000
    fluct_ase = np.std(ase - ase[0]) / n * 1000
    assert fluct_engine == pytest.approx(fluct_ase, rel=0.1), (fluct_engine, fluct_ase)
    # Same drift: slopes agree within the noise of a 0.2 ps fit.
    t = np.arange(N_STEPS + 1) * TIMESTEP_FS * 1e-3
    slope_engine = drift_slope_meV_per_atom_per_ps(t, engine, n)
    slope_ase = drift_slope_meV_per_atom_per_ps(t, ase, n)
    assert abs(slope_engine - slope_ase) < max(0.05, 0.1 * abs(slope_ase)), (slope_engine, slope_ase)
    # And both conserve energy well: a well-trained model at 0.5 fs.
    assert np.max(np.abs(engine - engine[0])) / n * 1000 < 5.0
