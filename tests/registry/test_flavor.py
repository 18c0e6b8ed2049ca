"""The ``mdgate`` MLflow flavor on a real tracking server: a potential logged as a descriptor plus
weights, registered, given the ``approved`` alias, and loaded back in one line from
``models:/NAME@approved`` as an ASE calculator that runs MD, or as a pyfunc predicting energies
and forces.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet
from mlflow import MlflowClient

from mdgate.errors import ModelLoadError
from mdgate.md.initial import maxwell_boltzmann
from mdgate.molecules import Molecule
from mdgate.potentials import load
from mdgate.potentials.describe import resolve
from mdgate.potentials.predict import predict
from registry import flavor
from tests.integration import MlflowOnly
from tests.models import GOOD_MODEL

pytestmark = pytest.mark.integration
ANI = Path(__file__).resolve().parents[2] / "examples" / "ani1x"


@pytest.fixture
def tracking(mlflow_only: MlflowOnly) -> Iterator[MlflowClient]:
    """The fluent API pointed at the session's server for one test, then pointed back."""
    mlflow.set_tracking_uri(mlflow_only.tracking_uri)
    try:
        yield MlflowClient(mlflow_only.tracking_uri)
    finally:
        mlflow.set_tracking_uri(None)  # None unsets it (MLflow handles it)


def approve(client: MlflowClient, source: Path, model_name: str) -> str:
    """Log and register ``source`` and point ``approved`` at the new version; return its URI."""
    info = flavor.log_model(source, name="model", registered_model_name=model_name)
    client.set_registered_model_alias(model_name, "approved", str(info.registered_model_version))
    assert client.get_logged_model(info.model_id).params == resolve(source).summary()  # the descriptor's
    return f"models:/{model_name}@approved"


def ten_steps_of_md(calc, molecule: Molecule) -> tuple[float, float]:
    """Total energy (eV) before and after ten 0.5 fs velocity Verlet steps at 300 K."""
    atoms = molecule.atoms.copy()
    atoms.calc = calc
    atoms.set_velocities(maxwell_boltzmann(atoms, 300.0, np.random.default_rng(0)))
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(10)
    return e0, atoms.get_total_energy()


def test_a_schnetpack_model_loads_from_the_approved_alias_and_runs_md(
        tracking: MlflowClient, packaged_molecules: list[Molecule], tmp_path: Path) -> None:
    name = f"flavor-{uuid.uuid4().hex[:8]}"
    uri = approve(tracking, GOOD_MODEL, name)
    version = tracking.get_model_version_by_alias(name, "approved")
    assert not [k for k in version.tags if k.startswith("mdgate.")]  # the summary is the logged model's
    assert resolve(GOOD_MODEL).summary()["mdgate.cutoff_A"] == "5"

    calc = flavor.load_model(uri, dst_path=tmp_path / "dl")
    assert (tmp_path / "dl" / "potential" / "mdgate.yaml").is_file()
    assert (tmp_path / "dl" / "potential" / GOOD_MODEL.name).read_bytes() == GOOD_MODEL.read_bytes()
    assert flavor.descriptor_path(tmp_path / "dl") == tmp_path / "dl" / "potential" / "mdgate.yaml"
    ethanol = packaged_molecules[0]
    e0, e10 = ten_steps_of_md(calc, ethanol)
    assert np.isfinite([e0, e10]).all() and abs(e10 - e0) / len(ethanol.atoms) < 5e-3

    direct = load(GOOD_MODEL, device="cpu")
    structures = [(m.atoms.numbers, m.atoms.positions) for m in packaged_molecules[:3]]
    energies, forces = predict(direct, structures)
    table = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame(
        {"numbers": [z.tolist() for z, _ in structures], "positions": [x.tolist() for _, x in structures]}))
    assert list(table.columns) == ["energy_eV", "forces_eV_per_A"]
    np.testing.assert_allclose(table["energy_eV"], energies, rtol=1e-12)
    for got, want in zip(table["forces_eV_per_A"], forces, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_ani1x_loads_from_the_approved_alias_and_runs_md(
        tracking: MlflowClient, packaged_molecules: list[Molecule]) -> None:
    pytest.importorskip("torchani", exc_type=ImportError)
    name = f"flavor-ani-{uuid.uuid4().hex[:8]}"
    uri = approve(tracking, ANI, name)
    summary = resolve(ANI).summary()
    assert summary["mdgate.level_of_theory"] == "wB97X/6-31G(d)" and summary["mdgate.elements"] == "H,C,N,O"
    e0, e10 = ten_steps_of_md(flavor.load_model(uri), packaged_molecules[0])
    assert np.isfinite([e0, e10]).all() and abs(e10 - e0) / len(packaged_molecules[0].atoms) < 5e-3
    predicted = mlflow.pyfunc.load_model(uri).predict([m.atoms for m in packaged_molecules[:2]])
    [e_direct], _ = predict(load(ANI, device="cpu"), [(packaged_molecules[0].atoms.numbers,
                                                      packaged_molecules[0].atoms.positions)])
    assert predicted["energy_eV"][0] == pytest.approx(e_direct, rel=1e-12)


def test_a_model_without_the_flavor_is_refused(tracking: MlflowClient, tmp_path: Path) -> None:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="other", python_model=_Echo())
    refused = r"not an MLflow model with the mdgate flavor \(flavors: \['python_function'\]"
    with pytest.raises(ModelLoadError, match=refused):
        flavor.load_model(info.model_uri, dst_path=tmp_path)
    assert flavor.descriptor_path(tmp_path) is None


class _Echo(mlflow.pyfunc.PythonModel):
    """A pyfunc model of another kind."""

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        """Echo."""
        return model_input
