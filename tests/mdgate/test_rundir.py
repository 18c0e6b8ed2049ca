"""schnetpack training runs as input: ``mdgate validate RUN_DIR`` reads units, keys and cutoff from
the run's ``config.yaml``; a model trained in kcal/mol and validated without units is an Error
naming kcal/mol.

The run folder ``tests/data/spk_run_kcal/`` is a real ``spktrain`` run (a small PaiNN, 30 epochs
on the packaged reference set in kcal/mol; ``scripts/make_spk_run.py`` rebuilds it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mdgate.cli import app
from mdgate.config import GateConfig
from mdgate.errors import MetadataError
from mdgate.potentials.rundir import is_training_run, merge_meta, read_training_run

SPK_RUN = Path(__file__).resolve().parents[1] / "data" / "spk_run_kcal"
#: What the run's config.yaml declares, as ModelMeta fields.
SPK_META = {"energy_unit": "kcal/mol", "position_unit": "Angstrom", "energy_key": "energy",
            "forces_key": "forces", "cutoff_A": 5.0}


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [*map(str, args)], catch_exceptions=False)


def error_line(result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def run_folder(tmp_path: Path, config: dict) -> Path:
    """A run folder with the committed best_model and the given config."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(SPK_RUN / "best_model", folder / "best_model")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_the_committed_run_is_a_spktrain_run() -> None:
    assert is_training_run(SPK_RUN) and not is_training_run(SPK_RUN / "best_model")
    assert sorted(p.name for p in SPK_RUN.iterdir()) == ["best_model", "config.yaml"]
    raw = (SPK_RUN / "config.yaml").read_text()
    assert "${globals.energy_key}" in raw and "${hydra:runtime.cwd}" in raw  # saved unresolved by spktrain


def test_metadata_is_read_from_config_yaml() -> None:
    run = read_training_run(SPK_RUN)
    assert run.meta == SPK_META
    assert run.model_path == SPK_RUN / "best_model"
    assert run.sources["energy_unit"] == "data.property_units.energy = kcal/mol"
    assert run.sources["cutoff_A"] == "globals.cutoff = 5.0 Ang"


def test_interpolations_and_other_units(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, {
        "run": {"work_dir": "${hydra:runtime.cwd}"},
        "globals": {"cutoff": 9.0, "energy_key": "E", "forces_key": "F"},
        "data": {"distance_unit": "Bohr", "property_units": {"${globals.energy_key}": "Ha", "F": "Ha/Bohr"}},
        "model": {"output_modules": [{"output_key": "${globals.energy_key}"}]},
    })
    run = read_training_run(folder)
    assert run.meta["energy_unit"] == "Hartree" and run.meta["position_unit"] == "Bohr"
    assert (run.meta["energy_key"], run.meta["forces_key"]) == ("E", "F")
    assert run.meta["cutoff_A"] == pytest.approx(9.0 * 0.529177, rel=1e-5)


def test_interpolated_values_are_resolved(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, {
        "globals": {"cutoff": 5.0, "energy_key": "energy", "forces_key": "forces", "eu": "kcal/mol"},
        "data": {"distance_unit": "Ang", "property_units": {"energy": "${globals.eu}",
                                                            "forces": "${globals.eu}/Ang"}},
    })
    assert read_training_run(folder).meta == SPK_META


def test_forces_unit_must_be_energy_per_distance(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, {"globals": {"cutoff": 5.0},
                                   "data": {"distance_unit": "Ang",
                                            "property_units": {"energy": "kcal/mol", "forces": "eV/Ang"}}})
    with pytest.raises(MetadataError, match=r"data.property_units.forces = eV/Ang is not data.property_units.energy"
                                            r" per data.distance_unit \(kcal/mol/Ang\)"):
        read_training_run(folder)


def test_unknown_unit_in_config(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, {"data": {"property_units": {"energy": "furlong"}}})
    with pytest.raises(MetadataError, match=r"data.property_units.energy = 'furlong' is not an? energy unit"):
        read_training_run(folder)


def test_unresolvable_interpolation(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, {"globals": {"energy_key": "${globals.missing}"}})
    with pytest.raises(MetadataError, match=r"cannot resolve globals\.energy_key"):
        read_training_run(folder)


def test_explicit_metadata_agreeing_with_the_config_is_fine() -> None:
    run = read_training_run(SPK_RUN)
    merged = merge_meta(run, {"energy_unit": "kcal/mol", "position_unit": "Ang", "cutoff_A": 5.0,
                              "level_of_theory": "GFN2-xTB"})
    assert merged == {**SPK_META, "level_of_theory": "GFN2-xTB"}


def test_contradiction_names_both_values() -> None:
    run = read_training_run(SPK_RUN)
    with pytest.raises(MetadataError) as err:
        merge_meta(run, {"energy_unit": "eV"}, {"energy_unit": "--energy-unit"})
    assert str(err.value) == (
        f"contradictory metadata: the training config {SPK_RUN / 'config.yaml'} says "
        "data.property_units.energy = kcal/mol, but --energy-unit says energy_unit = eV; drop --energy-unit "
        "or fix the config")


# ------------------------------------------------------------------------------- the CLI


def test_validate_best_model_without_units_is_an_error_naming_kcal(tmp_path: Path) -> None:
    """The packaged defaults: the unit check stops it before MD."""
    line = error_line(invoke("validate", SPK_RUN / "best_model", "--out", tmp_path / "out"))
    assert "the model's energy unit looks like kcal/mol, not the declared eV" in line, line
    assert "tag mdgate.energy_unit=kcal/mol (or --energy-unit kcal/mol)" in line
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["verdict"] == "Error" and "kcal/mol" in res["reason"]


def test_validate_run_dir_with_a_contradicting_option(tmp_path: Path) -> None:
    line = error_line(invoke("validate", SPK_RUN, "--energy-unit", "eV", "--out", tmp_path / "out"))
    assert "data.property_units.energy = kcal/mol, but --energy-unit says energy_unit = eV" in line


def short_config(tmp_path: Path, small_set, n_steps: int = 200) -> Path:
    """The default config with ``n_steps`` NVE steps of one replica on the small set, every other
    stage (a section with ``enabled``) off.
    """
    data = GateConfig().model_dump(mode="json")
    data["md"].update(n_steps=n_steps, n_replicas=1, device="cpu")
    for name, section in data.items():
        if name != "md" and isinstance(section, dict) and "enabled" in section:
            section["enabled"] = False
    data.update(molecules=str(small_set.molecules), reference=str(small_set.reference))
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_validate_run_dir_reads_units_and_matches_explicit_units(tmp_path: Path, small_set) -> None:
    """``validate RUN_DIR`` = ``validate best_model --energy-unit kcal/mol``, to the last digit."""
    common = ["--config", short_config(tmp_path, small_set)]
    from_run = invoke("validate", SPK_RUN, *common, "--out", tmp_path / "run")
    explicit = invoke("validate", SPK_RUN / "best_model", "--energy-unit", "kcal/mol", *common,
                      "--out", tmp_path / "explicit")
    assert from_run.exit_code in (0, 1), (from_run.stdout, from_run.stderr)
    assert from_run.exit_code == explicit.exit_code
    a = json.loads((tmp_path / "run" / "results.json").read_text())
    b = json.loads((tmp_path / "explicit" / "results.json").read_text())
    assert a["model"]["energy_unit"] == "kcal/mol" and a["model"]["cutoff_A"] == 5.0
    for key in ("verdict", "reason", "failed_checks", "molecules", "accuracy"):
        assert a[key] == b[key], key
    # The forces are in eV/Å once the unit is known: accuracy is measured, not a unit ratio off.
    assert a["accuracy"]["force_r2"] > 0.9


@pytest.mark.slow
def test_a_fresh_spktrain_run_is_read_and_its_unit_detected(tmp_path: Path) -> None:
    """``scripts/make_spk_run.py`` end to end (spktrain, 10 epochs): the new run folder is read like
    the committed one, and its best_model without units is an Error naming kcal/mol.
    """
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "make_spk_run.py"
    subprocess.run([sys.executable, str(script), "--epochs", "10", "--out", str(tmp_path / "run"),
                    "--workdir", str(tmp_path / "work")], check=True, capture_output=True, timeout=600)
    assert read_training_run(tmp_path / "run").meta == SPK_META
    line = error_line(invoke("validate", tmp_path / "run" / "best_model", "--out", tmp_path / "out"))
    assert "looks like kcal/mol, not the declared eV" in line, line
