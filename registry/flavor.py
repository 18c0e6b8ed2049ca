"""An MLflow flavor for interatomic potentials: a model descriptor and its weights, loaded back in
one line as an ASE calculator or, through ``mlflow.pyfunc``, as energies and forces.

    from registry import flavor
    flavor.log_model("examples/ani1x", name="model", registered_model_name="ani1x")
    calc = flavor.load_model("models:/ani1x@approved")      # an ase Calculator (eV, eV/Å)
    atoms.calc = calc

The model folder holds ``potential/mdgate.yaml`` (:mod:`mdgate.potentials.descriptor`) with the
weight files it lists at their relative paths, an ``MLmodel`` with the ``mdgate`` flavor (the
descriptor's path, schema version and framework) and the ``python_function`` flavor (this module's
:func:`_load_pyfunc`), and ``requirements.txt`` (the descriptor's requirements). The version gets
the descriptor's summary as ``mdgate.*`` tags. Loading calls the descriptor's loader: load only
models from a registry you trust (design 5c).

pyfunc input: a ``pandas.DataFrame`` with columns ``numbers`` (atomic numbers per structure) and
``positions`` (``[n, 3]`` Å per structure), a list of ``ase.Atoms``, or one ``ase.Atoms``.
Output: a DataFrame with ``energy_eV`` and ``forces_eV_per_A`` (``[n, 3]`` lists) per structure.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms
from mlflow.models import Model
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import add_to_model

from mdgate import __version__
from mdgate.errors import ModelLoadError
from mdgate.potentials import Potential, load
from mdgate.potentials.describe import resolve
from mdgate.potentials.descriptor import DESCRIPTOR_FILE, Descriptor, write_descriptor
from mdgate.potentials.predict import PotentialCalculator, predict

FLAVOR_NAME = "mdgate"
#: The folder of the MLflow model holding the descriptor and its weights.
DATA = "potential"


def save_model(descriptor: Descriptor | str | Path, path: str | Path, mlflow_model: Model | None = None,
               metadata: dict[str, Any] | None = None) -> None:
    """Write a potential as an MLflow model folder at ``path`` (which must not exist).

    Args:
        descriptor: a descriptor, a descriptor file or folder, or a schnetpack model (described).
        path: the folder to create.
        mlflow_model: the model configuration to add the flavors to (``Model.log`` passes one).
        metadata: free metadata stored in ``MLmodel``.

    Raises:
        MdgateError: the descriptor does not read or a weight file is missing.
    """
    d = resolve(descriptor)
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    data = path / DATA
    for rel, src in zip(d.weights, d.weight_paths(), strict=True):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, data / rel)
    write_descriptor(d, data)
    (path / "requirements.txt").write_text("".join(f"{r}\n" for r in d.requirements))
    mlflow_model = mlflow_model or Model()
    if metadata:
        mlflow_model.metadata = {**(mlflow_model.metadata or {}), **metadata}
    mlflow_model.add_flavor(FLAVOR_NAME, descriptor=f"{DATA}/{DESCRIPTOR_FILE}", schema_version=d.schema_version,
                            framework=str(d.framework), mdgate_version=__version__)
    add_to_model(mlflow_model, loader_module=__name__, data=DATA)
    mlflow_model.save(str(path / "MLmodel"))


def log_model(descriptor: Descriptor | str | Path, name: str = "model", registered_model_name: str | None = None,
              **kwargs: Any) -> ModelInfo:
    """Log a potential as an MLflow model, with the descriptor's summary as the logged model's
    params (and register it when ``registered_model_name`` is given).

    Args:
        descriptor: as :func:`save_model`.
        name: the logged model's name.
        registered_model_name: register a new version of this model.
        kwargs: passed to ``mlflow.models.Model.log`` (``metadata``, ``run_id``, ``tags``...).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``, ``registered_model_version``).
    """
    d = resolve(descriptor)
    params = {**d.summary(), **(kwargs.pop("params", None) or {})}
    return Model.log(artifact_path=None, name=name, flavor=sys.modules[__name__],
                     registered_model_name=registered_model_name, descriptor=d, params=params, **kwargs)


def load_potential(model_uri: str, device: str = "cpu", dst_path: str | Path | None = None) -> Potential:
    """The logged potential as mdgate's batched :class:`~mdgate.potentials.Potential`.

    Raises:
        ModelLoadError: the model has no ``mdgate`` flavor.
    """
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                     dst_path=str(dst_path) if dst_path else None))
    return _load_local(local, device)


def load_model(model_uri: str, device: str = "cpu", dst_path: str | Path | None = None) -> PotentialCalculator:
    """The logged potential as an ASE calculator (energy in eV, forces in eV/Å), e.g. from
    ``models:/NAME@approved``.
    """
    return PotentialCalculator(load_potential(model_uri, device, dst_path))


def descriptor_path(local: str | Path) -> Path | None:
    """The descriptor file of a downloaded MLflow model folder with the ``mdgate`` flavor (``None``
    for other models), for the gate: ``mdgate.potentials.load`` takes it as it is.
    """
    mlmodel = Path(local) / "MLmodel"
    if not mlmodel.is_file():
        return None
    conf = Model.load(str(mlmodel)).flavors.get(FLAVOR_NAME)
    return None if conf is None else Path(local) / str(conf["descriptor"])


def _load_local(local: Path, device: str) -> Potential:
    """Load the potential of a downloaded MLflow model folder."""
    found = descriptor_path(local)
    if found is None:
        flavors = sorted(Model.load(str(local / "MLmodel")).flavors) if (local / "MLmodel").is_file() else []
        raise ModelLoadError(f"{local} is not an MLflow model with the {FLAVOR_NAME} flavor (flavors: {flavors}); "
                             "log it with registry.flavor.log_model")
    return load(found, device=device)


class _PyfuncPotential:
    """The ``python_function`` face of a logged potential: energies and forces of structures."""

    def __init__(self, potential: Potential):
        self.potential = potential

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Energies (eV) and forces (eV/Å) of each structure of ``model_input`` (see the module doc)."""
        structures = _structures(model_input)
        energies, forces = predict(self.potential, structures)
        return pd.DataFrame({"energy_eV": energies, "forces_eV_per_A": [f.tolist() for f in forces]})


def _structures(model_input: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(numbers, positions Å)`` per structure of a DataFrame, a list of Atoms or one Atoms."""
    if isinstance(model_input, Atoms):
        model_input = [model_input]
    if isinstance(model_input, pd.DataFrame):
        missing = {"numbers", "positions"} - set(model_input.columns)
        if missing:
            raise ValueError(f"input columns {sorted(model_input.columns)} lack {sorted(missing)}")
        return [(np.asarray(z, dtype=int), np.asarray(x, dtype=float).reshape(-1, 3))
                for z, x in zip(model_input["numbers"], model_input["positions"], strict=True)]
    if isinstance(model_input, list) and all(isinstance(a, Atoms) for a in model_input):
        return [(a.numbers, a.positions) for a in model_input]
    raise TypeError(f"expected a DataFrame with numbers and positions, or ase Atoms; got {type(model_input).__name__}")


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> _PyfuncPotential:
    """Called by ``mlflow.pyfunc.load_model`` with the model's ``potential`` folder."""
    device = str((model_config or {}).get("device", "cpu"))
    return _PyfuncPotential(load(Path(path) / DESCRIPTOR_FILE, device=device))
