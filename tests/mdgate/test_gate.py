"""End to end on real models: the trained small PaiNN is Approved, an untrained PaiNN and a
wrapper whose forces are not −dE/dR are Rejected, each for its own reasons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ase.io import write

from mdgate.config import Criteria, parse_config
from mdgate.molecules import Molecule, ReferenceSet, read_reference
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_module, load_potential
from mdgate.results import ValidationResult, Verdict
from mdgate.runner import validate
from mdgate.stages.accuracy import run_accuracy
from tests.models import MODEL_META, QUICK_STAGES, NonConservativeModel, save_model

#: Short MD for the default suite: 0.2 ps, energies recorded every 1 fs.
SHORT_MD = {"n_steps": 400, "record_every": 2, "device": "cpu"}
#: Strength of the rotational force field (eV/Å²) added to the good model: it pumps ~2 meV/atom
#: into a small molecule within ~0.08 ps, while moving force R² by less than 0.001.
CURL_eV_per_A2 = 0.01
#: The gate's default bounds, which the tests hold the models to.
DEFAULTS = Criteria()
#: Molecules of the non-conservative run (small ones: the drift is measured before fail-fast).
CURL_SET = ("ethanol", "malonaldehyde", "uracil")
STABILITY = {"finite", "max_force_eV_per_A", "max_temperature_K", "max_bond_deviation_A"}
CONSERVATION = {"drift_slope_meV_per_atom_per_ps", "max_energy_deviation_meV_per_atom"}


def failed_names(result: ValidationResult | dict) -> dict[str, set[str]]:
    """Failed required checks per molecule (and 'accuracy')."""
    data = result if isinstance(result, dict) else result.model_dump(mode="json")
    out: dict[str, set[str]] = {}
    for mol in data["molecules"]:
        out[mol["name"]] = {c["name"] for c in mol["checks"] if c["required"] and c["passed"] is False}
    if data["accuracy"] is not None:
        acc = data["accuracy"]["checks"]
        out["accuracy"] = {c["name"] for c in acc if c["required"] and c["passed"] is False}
    return out


def good_meta(path: Path) -> ModelMeta:
    return ModelMeta.model_validate(json.loads(path.with_suffix(".json").read_text()))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory, good_model_path: Path) -> ValidationResult:
    """The trained small PaiNN on the whole packaged set (10 molecules, 500 reference frames)."""
    cfg = parse_config({**QUICK_STAGES, "md": SHORT_MD}, "test")
    return validate(good_model_path, cfg, good_meta(good_model_path), out_dir=tmp_path_factory.mktemp("good"))


def test_the_trained_small_painn_is_approved(good_run: ValidationResult) -> None:
    assert good_run.verdict == Verdict.APPROVED, good_run.failed_checks
    assert good_run.failed_checks == []
    assert len(good_run.molecules) == 10
    for mol in good_run.molecules:
        rep = mol.replicas[0]
        assert rep.failure is None and rep.steps_done == SHORT_MD["n_steps"]  # never shortened
        for c in mol.checks:
            if c.required:
                assert c.passed is True, (mol.name, c)  # measured and passed, not merely not failed
        s, d = mol.summary, DEFAULTS
        assert abs(s["drift_slope_meV_per_atom_per_ps"]) < d.drift_slope_meV_per_atom_per_ps.bound
        assert s["max_energy_deviation_meV_per_atom"] < d.max_energy_deviation_meV_per_atom.bound
        assert s["max_bond_deviation_A"] < d.max_bond_deviation_A.bound
    acc = good_run.accuracy
    assert acc is not None and acc.applicable and acc.n_frames == 500
    assert acc.model_level_of_theory == acc.reference_level_of_theory == "GFN2-xTB"
    assert acc.force_r2 >= 0.95
    assert good_run.model.n_parameters and good_run.model.cutoff_A == pytest.approx(5.0)


def test_an_untrained_painn_is_rejected_for_accuracy_and_stability(
        tmp_path: Path, untrained_model_path: Path, small_set) -> None:
    cfg = parse_config({**QUICK_STAGES, "md": SHORT_MD, "molecules": str(small_set.molecules),
                        "reference": str(small_set.reference)}, "test")
    result = validate(untrained_model_path, cfg, ModelMeta(**MODEL_META), out_dir=tmp_path)
    assert result.verdict == Verdict.REJECTED
    failed = failed_names(result)
    # As measured: the untrained network heats each molecule past 2000 K within ~0.01 ps
    # (fail-fast stops it there, so completion fails) and its forces are far from xTB's.
    assert failed == {"ethanol": {"completion", "max_temperature_K"},
                      "malonaldehyde": {"completion", "max_temperature_K"},
                      "accuracy": {"min_force_r2"}}
    assert result.accuracy is not None and result.accuracy.force_r2 < 0.5
    for mol in result.molecules:
        rep = mol.replicas[0]
        assert rep.failure is not None and rep.failure.check in STABILITY
        assert rep.steps_done == rep.failure.step < SHORT_MD["n_steps"]
        # Its forces are still −dE/dR: energy is conserved while the molecule heats up.
        assert {c.name: c.passed for c in mol.checks}["max_energy_deviation_meV_per_atom"] is True
    assert "min_force_r2" in result.reason and "max_temperature_K" in result.reason


@pytest.fixture(scope="module")
def curl_set(tmp_path_factory: pytest.TempPathFactory, packaged_molecules: list[Molecule],
             packaged_reference: ReferenceSet) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("curl_set")
    write(folder / "molecules.extxyz", [m.atoms for m in packaged_molecules if m.name in CURL_SET])
    write(folder / "reference.extxyz", [f for f, n in zip(packaged_reference.frames, packaged_reference.names,
                                                          strict=True) if n in CURL_SET])
    return folder / "molecules.extxyz", folder / "reference.extxyz"


def test_forces_that_are_not_the_energy_gradient_are_rejected_by_energy_conservation(
        tmp_path: Path, repo_root: Path, good_model_path: Path, good_run: ValidationResult,
        curl_set: tuple[Path, Path]) -> None:
    """The good model plus a small curl field, through the installed CLI in a fresh process
    (which unpickles the wrapper from tests.models via PYTHONPATH).
    """
    wrapped = NonConservativeModel(load_module(good_model_path), CURL_eV_per_A2)
    meta = json.loads(good_model_path.with_suffix(".json").read_text())
    model = save_model(wrapped, tmp_path / "curl.pt", meta)
    config = tmp_path / "gate.yaml"
    config.write_text(yaml.safe_dump({**QUICK_STAGES, "md": SHORT_MD, "molecules": str(curl_set[0]),
                                      "reference": str(curl_set[1])}))
    out = tmp_path / "out"
    run = subprocess.run(
        [Path(sys.executable).with_name("mdgate"), "validate", model, "--config", config, "--out", out],
        capture_output=True, text=True, timeout=400, env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert run.returncode == 1, run.stderr
    assert run.stdout.startswith("Rejected: ")
    data = json.loads((out / "results.json").read_text())
    failed = failed_names(data)
    assert failed.pop("accuracy") == set()  # force R² does not see a curl this small
    base = {m.name: m for m in good_run.molecules}
    for mol in data["molecules"]:
        name = mol["name"]
        # Energy conservation fails, and the trajectory was stopped for it ...
        assert failed[name] >= CONSERVATION, (name, failed[name])
        assert failed[name] <= CONSERVATION | {"completion"}, (name, failed[name])
        assert mol["replicas"][0]["failure"]["check"] == "max_energy_deviation_meV_per_atom"
        slope = mol["replicas"][0]["metrics"]["drift_slope_meV_per_atom_per_ps"]
        bound = DEFAULTS.drift_slope_meV_per_atom_per_ps.bound
        assert slope > 10 * bound  # energy grows: the torque spins the molecule up
        # ... while the same model without the curl, from the same start, conserves energy.
        assert base[name].passed
        assert abs(base[name].summary["drift_slope_meV_per_atom_per_ps"]) < bound / 5
        assert set(failed[name]) & STABILITY == set()
    base_acc = run_accuracy(load_potential(good_model_path, device="cpu"), read_reference(curl_set[1]),
                            parse_config({}), "GFN2-xTB")
    assert data["accuracy"]["force_r2"] >= 0.95
    assert data["accuracy"]["force_r2"] < base_acc.force_r2  # slightly worse, nothing more
    assert base_acc.force_r2 - data["accuracy"]["force_r2"] < 0.005


@pytest.mark.slow
def test_the_trained_small_painn_passes_the_default_protocol(tmp_path: Path, good_model_path: Path) -> None:
    """The packaged defaults as `mdgate validate` applies them (10 molecules × 3 replicas, 2 ps NVE
    and the 2 ps heat-stress ramp to 1000 K), fail-fast off so that every trajectory runs out:
    a well-trained model is Approved by every stage, with the margins docs/protocol.md states
    (stress: worst bond deviation 0.36 Å for a bound of 0.5 Å, closest approach 0.84 Å for 0.6 Å).
    About 12 minutes on 2 cores.
    """
    result = validate(good_model_path, parse_config({"md": {"device": "cpu", "fail_fast": False}}),
                      good_meta(good_model_path), out_dir=tmp_path)
    assert result.verdict == Verdict.APPROVED, result.reason
    assert all(result.stages[s].ran and result.stages[s].passed
               for s in ("sanity", "nve", "stress", "accuracy", "oracle"))
    assert result.accuracy is not None and result.accuracy.force_r2 > 0.99
    stress = result.stages["stress"].molecules
    assert len(stress) == 10 and all(len(m.replicas) == 3 for m in stress + result.molecules)
    assert all(r.steps_done == 4000 and r.failure is None for m in stress + result.molecules for r in m.replicas)
    worst = {c.name: c.value for c in result.stages["stress"].checks}
    assert worst["max_bond_deviation_A"] < 0.45 and worst["min_distance_A"] > 0.7
