"""The energy-landscape stage (``pes``): conformers, relaxed torsion scans, harmonic frequencies
and close contacts against GFN2-xTB, before any MD.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.vibrations import Vibrations

from mdgate.config import GateConfig, parse_config
from mdgate.errors import MoleculeSetError
from mdgate.molecules import Molecule
from mdgate.pes.measure import basin, reachable, well_depth_meV
from mdgate.pes.reference import _packaged, cache_key
from mdgate.pes.topology import embed, topology
from mdgate.pes.vibrations import harmonic
from mdgate.potentials import load
from mdgate.potentials.schnetpack import load_module
from mdgate.results import Verdict
from mdgate.runner import load_inputs, run_pipeline
from mdgate.stages.oracle import make_oracle
from mdgate.stages.pes import run_pes_stage
from tests.models import MODEL_META, HoleModel, save_model

MODELS = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "models"


def by_name(molecules: list[Molecule], *names: str) -> list[Molecule]:
    return [m for m in molecules if m.name in names]


def test_frequencies_match_ase_vibrations_on_xtb_water() -> None:
    """The finite-difference Hessian, mass weighting and rigid-body projection give ASE's own
    harmonic analysis of GFN2-xTB water (at its minimum) within 1 cm⁻¹.
    """
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    water = molecule("H2O")
    water.calc = TBLite(method="GFN2-xTB", verbosity=0)
    BFGS(water, logfile=None).run(fmax=1e-4)
    oracle = make_oracle(GateConfig().oracle)
    ours = harmonic(water.numbers, water.positions, lambda s: oracle.evaluate(s)[1], 0.005)
    vib = Vibrations(water, delta=0.005, name="/tmp/mdgate-test-vib")
    vib.clean()
    vib.run()
    theirs = np.sort(vib.get_frequencies().real)[-3:]
    vib.clean()
    assert len(ours) == 3
    assert ours == pytest.approx(theirs, abs=1.0)


def test_torsion_basin_and_contact_wells() -> None:
    amide = np.array([0, 96, 314, 621, 312, 148, 80, 135, 287, 554, 318, 86])
    assert basin(amide, 250).tolist() == [True, True] + [False] * 9 + [True]  # cis amide behind its barrier
    assert basin(np.array([0, 16, 25, 10, 1, 15]), 250).all()  # a methyl rotor: the whole turn
    assert well_depth_meV(np.array([0.0, 0.1, 0.5, 0.4, 1.0])) == pytest.approx(100.0)
    assert well_depth_meV(np.array([0.0, 0.1, 0.2])) == 0.0
    assert well_depth_meV(np.array([0.0, np.nan])) == float("inf")
    assert reachable(np.array([0.0, 1.0, 2.5, 3.0, 1.0]), 2000.0) == 2  # the wall at 2.5 eV hides the fall


def test_topology_from_smiles_and_from_geometry(packaged_molecules: list[Molecule]) -> None:
    aspirin = by_name(packaged_molecules, "aspirin")[0]
    topo = topology(aspirin.atoms, "aspirin")
    assert topo.source == "smiles" and len(topo.rotors) == 5 and len(topo.bonds) == 21
    atoms = aspirin.atoms.copy()
    del atoms.info["smiles"]
    perceived = topology(atoms, "aspirin")
    assert perceived.source == "geometry" and len(perceived.bonds) == 21 and len(perceived.rotors) == 5
    ethanol = by_name(packaged_molecules, "ethanol")[0]
    assert len(embed(topology(ethanol.atoms, "ethanol"), 8, 0)) == 2  # trans and gauche
    wrong = ethanol.atoms.copy()
    wrong.info["smiles"] = "CCN"
    with pytest.raises(MoleculeSetError, match="does not match"):
        topology(wrong, "ethanol")


def test_the_packaged_set_ships_its_oracle_landscape(packaged_molecules: list[Molecule]) -> None:
    """Under the default settings every packaged molecule finds its oracle side in the package, so
    the default protocol never pays for it (after a settings change: scripts/make_pes_reference.py).
    """
    config = GateConfig()
    oracle = make_oracle(config.oracle)
    missing = [m.name for m in packaged_molecules if cache_key(m, oracle, config.pes) not in _packaged()]
    assert not missing, f"run scripts/make_pes_reference.py: no packaged oracle landscape for {missing}"


def test_the_narrow_data_model_is_rejected_on_a_torsion_barrier(packaged_molecules: list[Molecule]) -> None:
    """painn_cold (the packaged recipe on 100 K data only) gets aspirin's torsion barriers wrong by
    far more than the teacher; painn_hot (the same recipe on 500 K + 1000 K data) does not.
    """
    mols = by_name(packaged_molecules, "aspirin")
    for name, rejected in (("painn_cold", True), ("painn_hot", False)):
        pot = load(MODELS / f"{name}.pt", "cpu")
        result = run_pes_stage(pot, mols, GateConfig(), pot.meta.level_of_theory)
        barrier = next(c for c in result.molecule_checks["aspirin"] if c.name == "torsion_barrier_error_meV")
        assert (result.passed is False) == rejected, (name, [(c.name, c.value) for c in result.checks])
        assert (barrier.passed is False) == rejected
    assert result.curves["aspirin"]["torsion_labels"]


def test_the_teacher_passes_where_it_is_closest_to_the_bounds(packaged_molecules: list[Molecule]) -> None:
    """Aspirin (the teacher's worst torsions) and naphthalene (its worst frequencies), with the
    margins docs/protocol.md states.
    """
    mols = by_name(packaged_molecules, "aspirin", "naphthalene")
    teacher = load(MODELS / "teacher.pt", "cpu")
    result = run_pes_stage(teacher, mols, GateConfig(), teacher.meta.level_of_theory)
    assert result.passed is True, [(c.name, c.value) for c in result.checks if c.passed is False]
    worst = {c.name: c.value for c in result.checks}
    assert worst["torsion_profile_mae_meV"] < 170.0 / 1.9
    assert worst["torsion_barrier_error_meV"] < 250.0 / 1.4
    assert worst["frequency_mae_cm1"] < 100.0 / 1.9
    assert worst["close_contact_well_meV"] == 0.0


def test_a_close_contact_hole_is_caught_without_md(tmp_path, packaged_molecules: list[Molecule]) -> None:
    """A conservative H–H hole below 1.49 Å (the stress stage's test model), which sanity cannot
    see, is caught by pulling ethanol's geminal H atoms together; the same model without it is not.
    """
    hole = HoleModel(load_module(MODELS / "painn_small.pt"), z1=1, z2=1, r_on_A=1.49, depth_eV=2.0, width_A=0.005)
    path = save_model(hole, tmp_path / "hole.pt", MODEL_META)
    mols = by_name(packaged_molecules, "ethanol")
    config = GateConfig()
    for model, caught in ((path, True), (MODELS / "painn_small.pt", False)):
        pot = load(model, "cpu")
        res = run_pes_stage(pot, mols, config, "GFN2-xTB")
        contact = next(c for c in res.molecule_checks["ethanol"] if c.name == "close_contact_well_meV")
        assert (contact.passed is False) == caught, contact
    assert contact.value == 0.0


def test_cross_level_models_are_judged_on_shape_only(packaged_molecules: list[Molecule]) -> None:
    mols = by_name(packaged_molecules, "ethanol")
    pot = load(MODELS / "painn_small.pt", "cpu")
    res = run_pes_stage(pot, mols, GateConfig(), "wB97X/6-31G(d)")
    checks = {c.name: c for c in res.molecule_checks["ethanol"]}
    assert "cross-level" in res.note
    torsion = checks["torsion_profile_mae_meV"]
    assert torsion.required is False and "cross-level" in torsion.note
    assert checks["close_contact_well_meV"].required is True


def test_a_user_set_is_computed_once_then_cached(tmp_path, packaged_molecules: list[Molecule]) -> None:
    """A molecule outside the packaged landscape (moved by 0.01 Å) is computed by the oracle, then
    read from the cache (same figures, no oracle time).
    """
    mol = by_name(packaged_molecules, "ethanol")[0]
    moved = Molecule("ethanol_moved", mol.atoms.copy())
    moved.atoms.positions[0, 0] += 0.01
    config = parse_config({"pes": {"cache_dir": str(tmp_path / "cache")}})
    pot = load(MODELS / "painn_small.pt", "cpu")
    first = run_pes_stage(pot, [moved], config, "GFN2-xTB")
    second = run_pes_stage(pot, [moved], config, "GFN2-xTB")
    assert first.per_molecule["ethanol_moved"]["oracle_seconds"] > 0
    assert second.per_molecule["ethanol_moved"]["oracle_seconds"] == 0
    assert list((tmp_path / "cache").glob("ethanol_moved-*.json"))
    for key in ("torsion_profile_mae_meV", "frequency_mae_cm1"):
        assert second.per_molecule["ethanol_moved"][key] == pytest.approx(first.per_molecule["ethanol_moved"][key])


def test_pes_is_a_stage_of_the_pipeline_and_its_failure_is_named(small_set, write_config, tmp_path) -> None:
    """The pipeline runs pes before MD; its failure rejects with the stage, molecule and check named,
    after the MD stages' reasons.
    """
    config = parse_config({"molecules": str(small_set.molecules), "reference": str(small_set.reference),
                           "md": {"n_steps": 200, "n_replicas": 1, "device": "cpu"}, "stress": {"enabled": False},
                           "oracle": {"enabled": False},
                           "pes": {"criteria": {"frequency_mae_cm1": {"bound": 0.01}}}})
    inputs = load_inputs(MODELS / "painn_small.pt", config)
    result = run_pipeline(inputs, config, inputs.potential.meta, "painn_small")
    assert result.stages["pes"].ran and result.timing.pes_s > 0
    assert result.verdict == Verdict.REJECTED
    assert any(f.stage == "pes" and f.check == "frequency_mae_cm1" for f in result.failures)
    assert "pes/" in result.reason
