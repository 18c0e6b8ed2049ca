"""``mdgate validate`` on bad inputs: exit 2 with a one-line message naming the problem; a model
that runs but is broken is a verdict (exit 1), never a crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ase.build import molecule
from ase.io import write
from typer.testing import CliRunner

from mdgate.cli import app
from mdgate.config import load_config
from tests.models import MODEL_META, NaNModel, build_painn, quick_config_file, save_model

SHORT = ["--n-steps", "40", "--config", str(quick_config_file())]


def invoke(*args: str | Path):
    """Run ``mdgate validate ARGS`` in process (click captures stdout and stderr apart)."""
    return CliRunner().invoke(app, ["validate", *map(str, args)], catch_exceptions=False)


def error_line(stderr: str) -> str:
    """The one message line on stderr (blank lines from the progress display aside)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def strict_json(path: Path) -> dict:
    """Parse JSON refusing NaN/Infinity, which are not JSON (RFC 8259)."""
    def refuse(token: str) -> None:
        raise ValueError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def assert_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = error_line(result.stderr)
    for f in fragments:
        assert f in line, line
    return line


# ------------------------------------------------------------------------------- model files


def test_missing_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    assert_error(invoke(missing, "--out", tmp_path / "out"), "model file not found", str(missing))
    # The run that could not be done still leaves a report saying so.
    res = strict_json(tmp_path / "out" / "results.json")
    assert res["verdict"] == "Error" and "model file not found" in res["reason"]
    assert "ERROR: NOT VALIDATED" in (tmp_path / "out" / "report.md").read_text()


def test_a_file_of_random_bytes_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    assert_error(invoke(path, "--out", tmp_path / "out"), str(path), "is not a loadable torch model")


def test_an_empty_file_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert_error(invoke(path, "--out", tmp_path / "out"), "model file is empty", str(path))


@pytest.mark.parametrize("obj, what", [
    ([1, 2, 3], "holds a list, not a torch.nn.Module"),
    ({"weight": torch.zeros(3)}, "holds a state dict, not a model"),
])
def test_a_pickle_that_is_not_a_model(tmp_path: Path, obj: object, what: str) -> None:
    path = tmp_path / "thing.pt"
    torch.save(obj, path)
    assert_error(invoke(path, "--out", tmp_path / "out"), str(path), what)


def test_a_model_without_forces(tmp_path: Path, small_set) -> None:
    path = save_model(build_painn(8, 1, forces=False), tmp_path / "energy_only.pt", MODEL_META)
    line = assert_error(invoke(path, "--molecules", small_set.molecules, "--out", tmp_path / "out"),
                        "no forces output 'forces'", "schnetpack.atomistic.Forces")
    assert "'energy'" in line  # the outputs it does have


def test_an_element_the_model_never_saw(tmp_path: Path, untrained_model_path: Path) -> None:
    mols = tmp_path / "chloromethane.extxyz"
    atoms = molecule("CH3Cl")
    atoms.info["name"] = "chloromethane"
    write(mols, [atoms])
    assert_error(invoke(untrained_model_path, "--molecules", mols, "--out", tmp_path / "out"),
                 "elements outside the model's coverage", "molecule chloromethane (CH3Cl) has Cl")


def test_an_unknown_energy_unit(tmp_path: Path, untrained_model_path: Path, small_set) -> None:
    assert_error(invoke(untrained_model_path, "--molecules", small_set.molecules, "--energy-unit", "furlongs",
                        "--out", tmp_path / "out"), "unknown energy unit 'furlongs'")


# --------------------------------------------------------------------------- config and sets


@pytest.mark.parametrize("text, fragments", [
    ("md:\n  n_steps: [10\n", ("malformed YAML", "line")),
    ("md:\n  n_stepz: 10\n", ("'md.n_stepz' = 10", "unknown key")),
    ("md:\n  timestep_fs: -0.5\n", ("'md.timestep_fs' = -0.5", "greater than 0")),
])
def test_bad_config_files(tmp_path: Path, untrained_model_path: Path, text: str, fragments: tuple) -> None:
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(text)
    result = invoke(untrained_model_path, "--config", cfg, "--out", tmp_path / "out")
    assert_error(result, str(cfg), *fragments)


def test_an_empty_molecule_file(tmp_path: Path, untrained_model_path: Path) -> None:
    mols = tmp_path / "none.extxyz"
    mols.write_text("")
    assert_error(invoke(untrained_model_path, "--molecules", mols, "--out", tmp_path / "out"),
                 "molecules file", str(mols))


def test_a_missing_molecule_file(tmp_path: Path, untrained_model_path: Path) -> None:
    result = invoke(untrained_model_path, "--molecules", tmp_path / "gone.extxyz", "--out", tmp_path / "out")
    assert_error(result, "molecules file not found", "gone.extxyz")


def test_a_reference_without_forces(tmp_path: Path, untrained_model_path: Path, small_set) -> None:
    ref = tmp_path / "bare.extxyz"
    write(ref, [molecule("CH3CH2OH")])
    assert_error(invoke(untrained_model_path, "--molecules", small_set.molecules, "--reference", ref,
                        "--out", tmp_path / "out"), str(ref), "no energy/forces")


def test_the_applied_config_and_its_sha256_are_in_results_json(
        tmp_path: Path, untrained_model_path: Path, small_set) -> None:
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "mols.extxyz").write_bytes(small_set.molecules.read_bytes())
    cfg = tmp_path / "gate.yaml"
    cfg.write_text("md:\n  n_steps: 30\n  seed: 7\nmolecules: sets/mols.extxyz\n"
                   "stress:\n  ramp_ps: 0.05\n  hold_ps: 0.05\n")
    result = invoke(untrained_model_path, "--config", cfg, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.stderr
    data = strict_json(tmp_path / "out" / "results.json")
    applied = load_config(cfg)
    assert data["criteria"]["sha256"] == applied.sha256()
    assert data["criteria"]["config"]["md"]["seed"] == 7
    assert data["criteria"]["config"]["molecules"] == str(tmp_path / "sets" / "mols.extxyz")
    assert [m["steps_asked"] for m in data["molecules"]] == [30, 30]
    assert applied.sha256()[:16] in (tmp_path / "out" / "report.md").read_text()


# ------------------------------------------------------------------------ broken, not invalid


def test_a_model_returning_nan_is_rejected_not_a_crash(tmp_path: Path, small_set, atomrefs) -> None:
    path = save_model(NaNModel(build_painn(8, 1, atomrefs)), tmp_path / "nan.pt", MODEL_META)
    out = tmp_path / "out"
    result = invoke(path, "--molecules", small_set.molecules, "--reference", small_set.reference,
                    "--out", out, *SHORT)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout.startswith("Rejected: ")
    res = strict_json(out / "results.json")
    assert res["verdict"] == "Rejected"
    for mol in res["molecules"]:
        checks = {c["name"]: c for c in mol["checks"]}
        assert checks["finite"]["passed"] is False
        assert checks["finite"]["step"] == 0  # non-finite from the first evaluation
        assert checks["completion"]["passed"] is False
        assert mol["replicas"][0]["failure"]["check"] == "finite"
    assert any(": finite = " in f for f in res["failed_checks"])
    assert res["accuracy"]["force_r2"] is None


# ------------------------------------------------------------------------- the real executable


def test_console_script_exit_codes_and_one_line_error(tmp_path: Path, repo_root: Path,
                                                      untrained_model_path: Path, small_set) -> None:
    exe = Path(sys.executable).with_name("mdgate")
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    bad = subprocess.run([exe, "validate", tmp_path / "nope.pt", "--out", tmp_path / "e"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert "model file not found" in error_line(bad.stderr)
    run = subprocess.run([exe, "validate", untrained_model_path, "--molecules", small_set.molecules,
                          "--out", tmp_path / "r", *SHORT],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1, run.stderr
    assert run.stdout.startswith("Rejected: ")
    assert strict_json(tmp_path / "r" / "results.json")["verdict"] == "Rejected"
