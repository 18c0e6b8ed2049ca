"""Register a potential with its metadata: what cannot be known fails here, not at gate time."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from mdgate.errors import MetadataError, UnitMismatchError
from mdgate.molecules import read_molecules, read_reference
from mdgate.potentials import ModelMeta
from mdgate.potentials.rundir import TrainingRun, is_training_run, merge_meta, read_training_run
from mdgate.potentials.schnetpack import SchnetpackPotential, count_parameters, find_cutoff_A, load_module
from mdgate.potentials.spec import SPEC_FILE, WEIGHTS_FILE, is_state_dict_model
from mdgate.potentials.unitcheck import UnitDiagnosis, check_force_units
from registry import types as T
from registry.artifacts import file_sha256, parent_parameters
from registry.client import Registry
from registry.connection import experiment_id, translate_errors
from registry.errors import VersionNotFoundError
from registry.text import iso
from registry.types import Status, VersionInfo, utcnow
from registry.versions import to_info

REGISTRATION_EXPERIMENT = "mdgate-registrations"


def check_meta(module: Any, meta: dict[str, Any]) -> tuple[ModelMeta, float]:
    """Validate metadata against the model: known units, a cutoff, the output keys.

    Returns:
        The metadata and the cutoff in Å (given, or read from the model).

    Raises:
        MetadataError: naming what is missing or wrong.
    """
    try:
        m = ModelMeta.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise MetadataError(f"metadata {where} = {err.get('input')!r}: {err['msg']}") from e
    m.check_units()
    own = find_cutoff_A(module, m.position_unit)
    if m.cutoff_A is not None and own is not None and abs(own - m.cutoff_A) > 1e-6 * max(own, 1.0):
        raise MetadataError(f"contradictory metadata: cutoff_A = {m.cutoff_A:g} Å but the model's own cutoff "
                            f"is {own:g} Å with position_unit = {m.position_unit!r}; fix the unit or the "
                            "cutoff")
    cutoff = m.cutoff_A or own
    if cutoff is None:
        raise MetadataError("the model has no cutoff that mdgate can read; give it with --meta cutoff_A=<Å>")
    outputs = getattr(module, "model_outputs", None)
    if isinstance(outputs, list | tuple):
        for key, what in ((m.energy_key, "energy"), (m.forces_key, "forces")):
            if key not in outputs:
                raise MetadataError(
                    f"the model has no {what} output {key!r} (its outputs are {sorted(outputs)}); "
                    f"set --meta {what}_key=<key> or add the output to the model"
                )
    return m, cutoff


def register_potential(registry: Registry, model_path: str | Path, name: str, parent: str | None = None,
                       meta: dict[str, Any] | None = None, description: str | None = None,
                       reference: str | Path | None = None, meta_sources: dict[str, str] | None = None,
                       ) -> VersionInfo:
    """Log a model file as an ``mlflow.pytorch`` model and register it as a new version of
    ``name`` with status Pending and its metadata as ``mdgate.*`` tags.

    The declared units are verified before anything is written (:func:`verify_units`): a model
    whose forces are a known unit ratio off the reference is refused.

    Args:
        registry: the registry.
        model_path: a schnetpack training run folder (``best_model`` + ``config.yaml``: units,
            keys and cutoff come from the config, which is logged as ``training/config.yaml`` of
            the registration run; see :mod:`mdgate.potentials.rundir`), a ``torch.save(model)`` file (e.g.
            schnetpack ``best_model``), or a folder in the state-dict format (``architecture.json``
            + ``state_dict.pt``, loaded with ``weights_only=True``; see
            :mod:`mdgate.potentials.spec`), logged as it is.
        name: registered model name.
        parent: the model this one derives from, ``name/version`` (must be registered) or free text.
        meta: metadata (:class:`~mdgate.potentials.ModelMeta` fields); units default to eV and Å,
            the cutoff is read from the model.
        description: version description.
        reference: reference set for the unit check (default: the packaged GFN2-xTB set).
        meta_sources: what gave each key of ``meta`` (e.g. ``--meta energy_unit``), for messages.

    Raises:
        ModelLoadError: the file is not a torch model.
        MetadataError: unknown unit, no cutoff, missing output, unregistered parent, metadata that
            contradicts the training config.
        UnitMismatchError: the forces are a known unit ratio off the reference.
        RegistryError: the registry could not be written.
    """
    path = Path(model_path)
    data = dict(meta or {})
    training = None
    if is_training_run(path):
        training = read_training_run(path)
        data = merge_meta(training, data, meta_sources)
        path = training.model_path
    module = load_module(path)
    if parent:
        data["parent"] = parent
    m, cutoff = check_meta(module, data)
    verify_units(path, m, reference)
    if parent and m.parent_n_parameters is None:
        m.parent_n_parameters = _registered_parent_parameters(registry, parent)
    tags = _meta_tags(m, cutoff, module, path)
    run_id = _log_model(registry, path, module, name, tags, training)
    return _create_version(registry, name, run_id, description)


def _create_version(registry: Registry, name: str, run_id: str, description: str | None) -> VersionInfo:
    """Register the ``model`` artifact of run ``run_id`` as a new Pending version of ``name`` (its
    metadata stays the run's params: the versions list shows only the gate's few tags).
    """
    with translate_errors(f"registering {name}"):
        try:
            registry.client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = registry.client.create_model_version(
            name, source=f"runs:/{run_id}/model", run_id=run_id,
            tags={T.STATUS: Status.PENDING.value, T.UPDATED_AT: iso(utcnow())},
            description=description,
        )
    return to_info(mv)


def _meta_tags(m: ModelMeta, cutoff_A: float, module: torch.nn.Module, path: Path) -> dict[str, str]:
    """The ``mdgate.*`` metadata of a new version: params of its registration run."""
    tags = {
        T.CUTOFF_A: f"{cutoff_A:g}", T.ENERGY_UNIT: m.energy_unit, T.POSITION_UNIT: m.position_unit,
        T.ENERGY_KEY: m.energy_key, T.FORCES_KEY: m.forces_key,
        T.N_PARAMETERS: str(count_parameters(module)), T.MODEL_SHA256: model_sha256(path),
    }
    if m.parent:
        tags[T.PARENT] = m.parent
    if m.parent_n_parameters:
        tags[T.PARENT_N_PARAMETERS] = str(m.parent_n_parameters)
    if m.level_of_theory:
        tags[T.LEVEL_OF_THEORY] = m.level_of_theory
    return tags


def _log_model(registry: Registry, path: Path, module: torch.nn.Module, name: str, tags: dict[str, str],
               training: TrainingRun | None) -> str:
    """Log the model as the ``model`` artifact of a run of the registration experiment (with
    ``tags`` as params, and the training config if any); return the run's id.
    """
    # Lazy: mlflow.pytorch and schnetpack take seconds to import, and only registering needs them.
    import mlflow.pytorch
    import schnetpack

    with tempfile.TemporaryDirectory(prefix="mdgate-register-") as tmp:
        local = Path(tmp) / "model"
        if is_state_dict_model(path):  # weights + spec: stored as they are, never re-pickled
            folder = path if path.is_dir() else path.parent
            local.mkdir()
            for fname in (SPEC_FILE, WEIGHTS_FILE):
                shutil.copy(folder / fname, local / fname)
        else:
            mlflow.pytorch.save_model(
                module, str(local), serialization_format="pickle", metadata={"mdgate": tags},
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"schnetpack=={schnetpack.__version__}"],
            )
        exp_id = experiment_id(registry.conn, REGISTRATION_EXPERIMENT)
        with translate_errors(f"logging {path.name}"):
            client = registry.client
            run = client.create_run(exp_id, run_name=f"register/{name}", tags={"mdgate.model": name,
                                                                               "mdgate.file": path.name})
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in tags.items()])
            client.log_artifacts(run.info.run_id, str(local), "model")
            if training is not None:  # the training config, as spktrain wrote it
                client.log_artifact(run.info.run_id, str(training.config_path), "training")
                client.set_tag(run.info.run_id, "mdgate.training_config", "training/config.yaml")
            client.set_terminated(run.info.run_id)
    return run.info.run_id


def verify_units(model_path: Path, meta: ModelMeta, reference: str | Path | None = None) -> UnitDiagnosis | None:
    """Run the unit check of ``mdgate validate`` (:func:`mdgate.potentials.unitcheck.check_force_units`) on a
    fresh copy of the model, against ``reference`` (default: the packaged set) on the frames of
    the elements the model handles, or the plausibility check on the packaged molecules.

    Returns:
        The diagnosis, or ``None`` when the check could not run (the model raised, a set could not
        be read): registering does not judge the model, the gate reports such failures.

    Raises:
        UnitMismatchError: the forces are a known unit ratio off the reference.
    """
    try:
        potential = SchnetpackPotential(load_module(model_path), meta, "cpu")
        return check_force_units(potential, read_molecules(), read_reference(reference), meta.energy_unit)
    except UnitMismatchError:
        raise
    except Exception:  # the gate reports models that cannot be evaluated
        return None


def model_sha256(path: Path) -> str:
    """sha256 of a model file, or of a state-dict model's spec and weights (in that order)."""
    if not is_state_dict_model(path):
        return file_sha256(path)
    folder = path if path.is_dir() else path.parent
    h = hashlib.sha256()
    for fname in (SPEC_FILE, WEIGHTS_FILE):
        h.update(file_sha256(folder / fname).encode())
    return h.hexdigest()


def _registered_parent_parameters(registry: Registry, parent: str) -> int | None:
    pname, _, pversion = parent.rpartition("/")
    if not pname or not pversion.isdigit():
        return None
    try:
        registry.get_version(pname, pversion)
    except VersionNotFoundError as e:
        raise MetadataError(f"parent {parent} is not a registered model version") from e
    return parent_parameters(registry, parent)
