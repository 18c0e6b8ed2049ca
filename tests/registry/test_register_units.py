"""``mdgate register`` verifies units and reads schnetpack training runs, against a real MLflow
server: a model trained in kcal/mol registered without units is refused with the message
``mdgate validate`` gives; its run folder registers with the config's units and the config logged.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from flows.cli import app
from mdgate.errors import UnitMismatchError
from registry import Registry, Status
from registry import types as T
from registry.artifacts import registered_metadata
from registry.register import register_potential
from tests.mdgate.test_rundir import SPK_RUN

pytestmark = pytest.mark.integration


def unique() -> str:
    """A registered model name no other test uses (the served gate ignores ``reg-*``)."""
    return f"reg-units-{uuid.uuid4().hex[:8]}"


def message(result) -> str:
    """The error message of a CLI call that exited 2, without ``error: ``."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0].removeprefix("error: ")


def versions_of(registry: Registry, name: str) -> list:
    try:
        return registry.client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []


def test_register_without_units_is_refused_like_validate(registry: Registry, tmp_path: Path) -> None:
    runner = CliRunner()
    validated = message(runner.invoke(app, ["validate", str(SPK_RUN / "best_model"), "--out", str(tmp_path)]))
    name = unique()
    refused = message(runner.invoke(app, ["register", str(SPK_RUN / "best_model"), "--name", name],
                                    env={"MDGATE_TRACKING_URI": registry.tracking_uri}))
    assert "the model's energy unit looks like kcal/mol, not the declared eV" in refused
    assert refused.endswith("tag mdgate.energy_unit=kcal/mol (or --energy-unit kcal/mol)")
    assert validated == f"{refused} (nothing validated; report in {tmp_path}/)"
    with pytest.raises(UnitMismatchError, match="looks like kcal/mol"):
        register_potential(registry, SPK_RUN / "best_model", name)
    assert versions_of(registry, name) == []  # nothing was registered


def test_register_best_model_with_its_unit(registry: Registry) -> None:
    v = register_potential(registry, SPK_RUN / "best_model", unique(), meta={"energy_unit": "kcal/mol"})
    assert v.status == Status.PENDING and registered_metadata(registry, v)[T.ENERGY_UNIT] == "kcal/mol"


def test_register_run_dir_reads_config_and_logs_it(registry: Registry, tmp_path: Path) -> None:
    name = unique()
    # This server, whatever an earlier in-process command left in MLFLOW_TRACKING_URI.
    env = {"MDGATE_TRACKING_URI": registry.tracking_uri, "MLFLOW_TRACKING_URI": registry.tracking_uri}
    result = CliRunner().invoke(app, ["register", str(SPK_RUN), "--name", name, "--meta",
                                      "level_of_theory=GFN2-xTB"], env=env)
    assert result.exit_code == 0, result.output
    (v,) = [registry.get_version(name, mv.version) for mv in versions_of(registry, name)]
    md = registered_metadata(registry, v)
    assert md[T.ENERGY_UNIT] == "kcal/mol" and md[T.POSITION_UNIT] == "Angstrom"
    assert md[T.CUTOFF_A] == "5" and md[T.ENERGY_KEY] == "energy" and md[T.FORCES_KEY] == "forces"
    assert md[T.LEVEL_OF_THEORY] == "GFN2-xTB"
    logged = registry.client.download_artifacts(v.run_id, "training/config.yaml", str(tmp_path))
    assert Path(logged).read_text() == (SPK_RUN / "config.yaml").read_text()
    assert registry.client.get_run(v.run_id).data.tags["mdgate.training_config"] == "training/config.yaml"


def test_register_run_dir_with_a_contradicting_unit(registry: Registry) -> None:
    name = unique()
    refused = message(CliRunner().invoke(app, ["register", str(SPK_RUN), "--name", name, "--meta",
                                               "energy_unit=eV"], env={"MDGATE_TRACKING_URI": registry.tracking_uri}))
    assert refused == (f"contradictory metadata: the training config {SPK_RUN / 'config.yaml'} says "
                       "data.property_units.energy = kcal/mol, but --meta energy_unit says energy_unit = eV; "
                       "drop --meta energy_unit or fix the config")
    assert versions_of(registry, name) == []
