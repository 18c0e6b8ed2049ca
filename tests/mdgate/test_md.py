"""NVE MD physics: initial velocities, the integrator against ASE, batching and fail-fast."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.morse import MorsePotential
from ase.md.verlet import VelocityVerlet

from mdgate import units
from mdgate.checks.evaluate import evaluate_trajectory
from mdgate.config import GateConfig
from mdgate.md.batch import run_nve
from mdgate.md.initial import degrees_of_freedom, maxwell_boltzmann, replica_seed
from mdgate.md.trajectory import StopLimits, Trajectory
from mdgate.molecules import Molecule
from mdgate.potentials.schnetpack import load_potential
from mdgate.stages.md import md_limits, run_md, split_lanes
from tests.models import MorsePairPotential, tetrahedron, triangle

MORSE = {"epsilon_eV": 0.5, "rho0": 4.0, "r0_A": 1.5}


def kinetic_energy(atoms: Atoms, v: np.ndarray) -> float:
    return float(0.5 * np.sum(atoms.get_masses()[:, None] * v * v))


def momenta(atoms: Atoms, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total linear momentum and angular momentum about the centre of mass."""
    m = atoms.get_masses()[:, None]
    r = atoms.positions - atoms.get_center_of_mass()
    return (m * v).sum(axis=0), np.cross(r, m * v).sum(axis=0)


# ---------------------------------------------------------------------------- initial velocities


def test_maxwell_boltzmann_gives_exactly_the_temperature_and_no_net_motion(
        packaged_molecules: list[Molecule]) -> None:
    for mol in packaged_molecules:
        atoms = mol.atoms
        assert degrees_of_freedom(atoms) == 3 * len(atoms) - 6
        for seed in range(3):
            v = maxwell_boltzmann(atoms, 300.0, np.random.default_rng(seed))
            t = 2 * kinetic_energy(atoms, v) / ((3 * len(atoms) - 6) * units.KB_EV_PER_K)
            assert t == pytest.approx(300.0, rel=1e-12), mol.name
            p, ang = momenta(atoms, v)
            scale = np.sqrt(kinetic_energy(atoms, v) * atoms.get_masses().sum())  # a typical |p|
            assert np.abs(p).max() < 1e-12 * scale, mol.name
            assert np.abs(ang).max() < 1e-12 * scale * 10, mol.name


@pytest.mark.parametrize("name, dof", [("CO", 1), ("CO2", 4), ("HCN", 4), ("H2O", 3), ("CH4", 9)])
def test_maxwell_boltzmann_on_small_and_linear_molecules(name: str, dof: int) -> None:
    atoms = molecule(name)
    assert degrees_of_freedom(atoms) == dof
    v = maxwell_boltzmann(atoms, 500.0, np.random.default_rng(7))
    assert 2 * kinetic_energy(atoms, v) / (dof * units.KB_EV_PER_K) == pytest.approx(500.0, rel=1e-12)
    p, ang = momenta(atoms, v)
    assert np.abs(p).max() < 1e-12
    # A diatomic too: its rotation is not one of its degrees of freedom.
    assert np.abs(ang).max() < 1e-12


def test_velocity_seeds_are_per_molecule_and_replica_and_reproducible() -> None:
    atoms = molecule("CH3CH2OH")

    def draw(seed: int, name: str, replica: int) -> np.ndarray:
        return maxwell_boltzmann(atoms, 300.0, np.random.default_rng(replica_seed(seed, name, replica)))

    assert np.array_equal(draw(0, "ethanol", 0), draw(0, "ethanol", 0))
    assert not np.allclose(draw(0, "ethanol", 0), draw(0, "ethanol", 1))
    assert not np.allclose(draw(0, "ethanol", 0), draw(1, "ethanol", 0))
    assert not np.allclose(draw(0, "ethanol", 0), draw(0, "other", 0))


# ----------------------------------------------------------------------- integrator against ASE


def test_velocity_verlet_matches_ase_on_a_morse_cluster() -> None:
    atoms = tetrahedron("C4", edge_A=1.5, rattle_A=0.15, seed=3)
    atoms += Atoms("C", positions=[[1.2, 1.2, 1.2]])
    n_steps, dt_fs, record_every = 300, 1.0, 10
    pot = MorsePairPotential(**MORSE, record=True)
    [traj] = run_nve(pot, [Molecule("cluster", atoms)], n_steps=n_steps, timestep_fs=dt_fs,
                     temperature_K=600.0, seed=11, record_every=record_every)
    assert traj.steps_done == n_steps and traj.failure is None

    # ASE: same start, same velocities, the equivalent calculator (its smooth cutoff out of reach).
    ase_atoms = atoms.copy()
    v0 = maxwell_boltzmann(atoms, 600.0, np.random.default_rng(replica_seed(11, "cluster", 0)))
    ase_atoms.set_velocities(v0)
    ase_atoms.calc = MorsePotential(epsilon=MORSE["epsilon_eV"], rho0=MORSE["rho0"], r0=MORSE["r0_A"],
                                    rcut1=100.0, rcut2=101.0)
    dyn = VelocityVerlet(ase_atoms, timestep=dt_fs * units.FS)
    positions = [ase_atoms.get_positions()]
    e_tot = [ase_atoms.get_total_energy()]
    forces = None
    for step in range(1, n_steps + 1):
        forces = dyn.step(forces)
        positions.append(ase_atoms.get_positions())
        if step % record_every == 0:
            e_tot.append(ase_atoms.get_total_energy())

    # The potential was called once per step (plus once at t=0) with the positions x(t).
    ours = np.stack(pot.calls)
    assert ours.shape == (n_steps + 1, len(atoms), 3)
    ase_pos = np.stack(positions)
    assert np.abs(ase_pos[-1] - ase_pos[0]).max() > 0.1  # the atoms did move
    assert np.abs(ours - ase_pos).max() < 1e-8
    e_ours = traj.e_tot_eV
    assert np.abs(e_ours - np.array(e_tot)).max() < 1e-8
    # Energy is conserved to the integrator's fluctuation, and that fluctuation is ASE's.
    fluct_ase = np.std(e_tot)
    assert 0 < fluct_ase < 0.05 * np.std(traj.e_kin_eV)
    assert np.std(e_ours) == pytest.approx(fluct_ase, rel=1e-4)
    assert np.mean(traj.temperature_K) > 100


def test_smaller_time_step_conserves_energy_quadratically_better() -> None:
    mol = Molecule("t", tetrahedron("C4", rattle_A=0.1, seed=1))
    spread = []
    for dt in (1.0, 0.5):
        [tr] = run_nve(MorsePairPotential(**MORSE), [mol], n_steps=int(200 / dt), timestep_fs=dt,
                       temperature_K=600.0, record_every=int(2 / dt))
        spread.append(np.ptp(tr.e_tot_eV))
    assert spread[0] / spread[1] == pytest.approx(4.0, rel=0.15)


# ------------------------------------------------------------------------------------ batching


def _series(tr: Trajectory) -> np.ndarray:
    return np.array([tr.e_pot_eV, tr.e_kin_eV, tr.series["max_bond_deviation_A"], tr.series["max_force_eV_per_A"]])


def test_batching_does_not_change_a_trajectory() -> None:
    """A float64 potential: a molecule alone or between others gives the identical trajectory."""
    mols = pulled_set()
    kw = {"n_steps": 100, "timestep_fs": 0.5, "temperature_K": 300.0, "record_every": 5}
    [alone] = run_nve(MorsePairPotential(**MORSE), [mols[2]], **kw)
    batch = run_nve(MorsePairPotential(**MORSE), mols, n_replicas=2, **kw)
    assert [(t.molecule, t.replica) for t in batch] == [
        (m.name, r) for m in mols for r in range(2)]
    np.testing.assert_array_equal(_series(batch[4]), _series(alone))
    assert not np.allclose(_series(batch[5]), _series(alone))  # replica 1 has its own velocities


def test_batching_a_schnetpack_model_changes_a_trajectory_only_by_float32_rounding(
        untrained_model_path, packaged_molecules) -> None:
    """A float32 network rounds differently in a bigger batch (~1 ulp in the forces); that stays
    at rounding level and far below the difference between two replicas.
    """
    pot = load_potential(untrained_model_path, device="cpu")
    by = {m.name: m for m in packaged_molecules}
    kw = {"n_steps": 60, "timestep_fs": 0.5, "temperature_K": 300.0, "record_every": 5}
    [alone] = run_nve(pot, [by["ethanol"]], **kw)
    batch = run_nve(pot, [by["malonaldehyde"], by["ethanol"], by["uracil"]], n_replicas=2, **kw)
    assert [(t.molecule, t.replica) for t in batch] == [
        (name, r) for name in ("malonaldehyde", "ethanol", "uracil") for r in range(2)]
    assert batch[2].steps_done == alone.steps_done == 60
    rounding = np.abs(np.array(batch[2].e_pot_eV) - alone.e_pot_eV).max()
    replicas = np.abs(np.array(batch[3].e_pot_eV) - alone.e_pot_eV).max()
    assert rounding < 1e-4
    assert replicas > 1e3 * rounding
    np.testing.assert_allclose(batch[2].series["max_bond_deviation_A"], alone.series["max_bond_deviation_A"], atol=1e-5)
    # The untrained model moves the atoms a lot: the comparison is not of a standing molecule.
    assert max(alone.series["max_bond_deviation_A"]) > 0.05


@pytest.mark.parametrize("n_lanes", [1, 2, 3, 10, 11])
def test_lanes_split_the_molecules_once_each_in_balanced_deterministic_batches(
        packaged_molecules, n_lanes: int) -> None:
    lanes = split_lanes(packaged_molecules, n_lanes)
    assert len(lanes) == min(n_lanes, len(packaged_molecules))
    names = [m.name for m in packaged_molecules]
    assert sorted(m.name for lane in lanes for m in lane) == sorted(names)
    for lane in lanes:  # each lane keeps the set's order
        assert [m.name for m in lane] == [n for n in names if n in {m.name for m in lane}]
    atoms = [sum(len(m.atoms) for m in lane) for lane in lanes]
    # greedy largest-first: no lane exceeds another by more than its smallest molecule
    assert max(atoms) - min(atoms) <= max(min(len(m.atoms) for m in lane) for lane in lanes)
    again = split_lanes(list(packaged_molecules), n_lanes)
    assert [[m.name for m in lane] for lane in again] == [[m.name for m in lane] for lane in lanes]


def test_two_lanes_of_the_packaged_set_have_equal_work(packaged_molecules) -> None:
    atoms = sorted(sum(len(m.atoms) for m in lane) for lane in split_lanes(packaged_molecules, 2))
    assert atoms[1] - atoms[0] <= 3, atoms


def test_a_lane_runs_as_one_batch_and_returns_each_molecule_in_order() -> None:
    """The gate's lane (``run_md`` on several molecules) gives what each molecule gives alone
    (float64 potential: identically), in the lane's order, NVE and stress.
    """
    mols = pulled_set()
    config = GateConfig.model_validate({
        "md": {"n_steps": 60, "n_replicas": 2, "record_every": 5, "fail_fast": False},
        "stress": {"ramp_ps": 0.02, "hold_ps": 0.01}, "oracle": {"enabled": False}})
    lane = run_md(MorsePairPotential(**MORSE), mols, config)
    alone = [run_md(MorsePairPotential(**MORSE), [m], config)[0] for m in mols]
    assert [r.nve.name for r in lane] == [m.name for m in mols]
    for a, b in zip(lane, alone, strict=True):
        assert a.nve.model_dump() == b.nve.model_dump()
        assert a.stress.model_dump() == b.stress.model_dump()
        assert a.stress.replicas[0].steps_done == 60


# ----------------------------------------------------------------------------------- fail-fast


def pulled_set() -> list[Molecule]:
    """Three molecules near a Morse minimum; only 'pulled' has the Cl–Cl pair being pulled.
    The last has other energies than the first two (3 pairs, not 6).
    """
    return [
        Molecule("steady_a", tetrahedron("C4", rattle_A=0.01, seed=1)),
        Molecule("pulled", tetrahedron("Cl2C2", rattle_A=0.01, seed=2)),
        Molecule("steady_b", triangle("CN2", rattle_A=0.01, seed=3)),
    ]


def puller(**kw: object) -> MorsePairPotential:
    # 3 eV/Å is well above the Morse well's largest restoring force (ε·ρ0/(2 r0) = 0.67 eV/Å).
    return MorsePairPotential(**MORSE, pull_z=17, pull_eV_per_A=3.0, **kw)  # type: ignore[arg-type]


MD = {"n_steps": 300, "timestep_fs": 0.5, "temperature_K": 300.0, "record_every": 10}


def test_a_bond_pulled_apart_fails_the_bond_check_through_the_engine() -> None:
    [_, pulled, _] = run_nve(puller(), pulled_set(), **MD)
    assert pulled.steps_done == MD["n_steps"] and pulled.failure is None  # no limits: runs on
    assert max(pulled.series["max_bond_deviation_A"]) > 1.0
    checks = {c.name: c for c in evaluate_trajectory(pulled, GateConfig().criteria).checks}
    assert checks["max_bond_deviation_A"].passed is False
    assert checks["max_bond_deviation_A"].value > 1.0
    # The pull is conservative: energy is still conserved, only the structure fails.
    assert checks["max_energy_deviation_meV_per_atom"].passed is True
    assert checks["drift_slope_meV_per_atom_per_ps"].passed is True


def test_fail_fast_stops_one_trajectory_at_a_recorded_step_and_the_others_run_on() -> None:
    free = run_nve(puller(), pulled_set(), **MD)
    # The energy limit is never reached by these conserving runs: it checks that the survivors
    # keep their own initial energies when the batch shrinks.
    limits = StopLimits(max_bond_deviation_A=0.5, max_energy_deviation_meV_per_atom=5.0)
    stopped = run_nve(puller(), pulled_set(), limits=limits, **MD)
    a, pulled, b = stopped
    assert pulled.failure is not None
    assert pulled.failure.check == "max_bond_deviation_A"
    step = pulled.failure.step
    assert 0 < step < MD["n_steps"] and step % MD["record_every"] == 0
    assert pulled.steps_done == step and pulled.step[-1] == step
    assert pulled.failure.time_ps == pytest.approx(step * MD["timestep_fs"] * 1e-3)
    assert pulled.failure.value == pulled.series["max_bond_deviation_A"][-1] > 0.5
    assert pulled.series["max_bond_deviation_A"][-2] <= 0.5  # it stopped at the first record past the bound
    # Up to the stop it is the free trajectory.
    assert pulled.e_pot_eV == free[1].e_pot_eV[:len(pulled.e_pot_eV)]
    for tr, ref in ((a, free[0]), (b, free[2])):
        assert tr.failure is None and tr.steps_done == MD["n_steps"]
        np.testing.assert_array_equal(_series(tr), _series(ref))
    checks = {c.name: c for c in evaluate_trajectory(pulled, GateConfig().criteria).checks}
    assert checks["completion"].passed is False
    assert checks["max_bond_deviation_A"].passed is False
    assert checks["max_bond_deviation_A"].step == step


def test_fail_fast_on_energy_deviation() -> None:
    mols = [Molecule("t", tetrahedron("C4", rattle_A=0.1, seed=1))]
    [free] = run_nve(MorsePairPotential(**MORSE), mols, n_steps=200, timestep_fs=2.0,
                     temperature_K=600.0, record_every=5)
    dev = np.abs(free.e_tot_eV - free.e_tot_eV[0]) * 1000 / 4
    bound = 0.5 * dev.max()
    [tr] = run_nve(MorsePairPotential(**MORSE), mols, n_steps=200, timestep_fs=2.0, temperature_K=600.0,
                   record_every=5, limits=StopLimits(max_energy_deviation_meV_per_atom=bound))
    first = int(np.argmax(dev > bound))
    assert tr.failure is not None and tr.failure.check == "max_energy_deviation_meV_per_atom"
    assert tr.failure.step == free.step[first]
    assert tr.failure.value == pytest.approx(dev[first])


def test_fail_fast_limits_are_the_required_bounds() -> None:
    c = GateConfig().criteria
    assert md_limits(GateConfig()) == StopLimits(
        max_force_eV_per_A=c.max_force_eV_per_A.bound, max_temperature_K=c.max_temperature_K.bound,
        max_bond_deviation_A=c.max_bond_deviation_A.bound,
        max_energy_deviation_meV_per_atom=c.max_energy_deviation_meV_per_atom.bound,
        temperature_jump_factor=c.temperature_jump_factor.bound, min_distance_A=c.min_distance_A.bound,
        isolated_h_atoms=c.isolated_h_atoms.bound)
    cfg = GateConfig.model_validate({"md": {"fail_fast_margin": 3.0},
                                     "criteria": {"max_temperature_K": {"bound": 2000.0, "required": False},
                                                  "max_force_eV_per_A": {"bound": None},
                                                  "max_energy_deviation_meV_per_atom": {"bound": 4.0}}})
    limits = md_limits(cfg)
    assert limits["max_energy_deviation_meV_per_atom"] == 12.0
    assert limits.get("max_temperature_K") is None and limits.get("max_force_eV_per_A") is None  # never stop for info
    assert md_limits(GateConfig.model_validate({"md": {"fail_fast": False}})) == StopLimits()


def test_an_approving_run_is_never_shortened() -> None:
    """With the gate's default fail-fast limits, a run that passes every check runs to the end
    and is the same run as without limits; limits just above its worst values change nothing.
    """
    mols = [m for m in pulled_set() if m.name != "pulled"]
    md = {"n_steps": 200, "timestep_fs": 0.5, "temperature_K": 300.0, "record_every": 5}
    config = GateConfig()
    free = run_nve(MorsePairPotential(**MORSE), mols, **md)
    gated = run_nve(MorsePairPotential(**MORSE), mols, limits=md_limits(config), **md)
    for f, g in zip(free, gated, strict=True):
        assert g.failure is None and g.steps_done == md["n_steps"]
        np.testing.assert_array_equal(_series(f), _series(g))
        rep = evaluate_trajectory(g, config.criteria)
        assert all(c.passed for c in rep.checks if c.required), [c for c in rep.checks if not c.passed]
    # Limits at the worst measured values (a check passes at its bound) do not stop anything.
    tight = StopLimits(
        max_force_eV_per_A=max(max(t.series["max_force_eV_per_A"]) for t in free),
        max_temperature_K=max(max(t.temperature_K) for t in free),
        max_bond_deviation_A=max(max(t.series["max_bond_deviation_A"]) for t in free),
        max_energy_deviation_meV_per_atom=max(
            float(np.max(np.abs(t.e_tot_eV - t.e_tot_eV[0])) * 1000 / t.n_atoms) for t in free),
    )
    for tr in run_nve(MorsePairPotential(**MORSE), mols, limits=tight, **md):
        assert tr.failure is None and tr.steps_done == md["n_steps"]


def test_non_finite_forces_stop_a_trajectory_at_once() -> None:
    class Exploding(MorsePairPotential):
        def __call__(self, numbers, positions_A, *args):
            e, f = super().__call__(numbers, positions_A, *args)
            if self.n_calls > 25:
                f = f.clone()
                f[numbers == 7] = float("nan")
            return e, f

    trajs = run_nve(Exploding(**MORSE), pulled_set(), n_steps=100, timestep_fs=0.5, temperature_K=300.0,
                    record_every=10)
    by = {t.molecule: t for t in trajs}
    assert by["steady_b"].failure is not None and by["steady_b"].failure.check == "finite"
    assert by["steady_b"].failure.step == 30  # first record after the forces went NaN
    assert by["steady_a"].failure is None and by["steady_a"].steps_done == 100
    assert by["pulled"].failure is None  # no limits: it comes apart but stays finite
