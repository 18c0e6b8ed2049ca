"""Descriptors derived from what exists today: a schnetpack model file, a state-dict folder or a
schnetpack training run, or a descriptor file or folder read as it is.

A derived descriptor says what the engine assumed before descriptors existed, from the same
sources, in the same order: the ``<model>.json`` sidecar beside a model file, then the metadata
given explicitly (``--energy-unit`` and friends), and for a training run its ``config.yaml``
(:mod:`mdgate.potentials.rundir`; a given value that contradicts it is an error). Units not
declared anywhere are the documented defaults, eV and Å. Nothing is loaded: a pickled model runs
code when it is loaded, and describing must not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdgate.errors import MetadataError, ModelLoadError
from mdgate.potentials import ModelMeta
from mdgate.potentials.descriptor import (
    DESCRIPTOR_FILE,
    Descriptor,
    Framework,
    is_descriptor,
    parse_descriptor,
    read_descriptor,
)
from mdgate.potentials.rundir import is_training_run, merge_meta, read_training_run
from mdgate.potentials.spec import SPEC_FILE, WEIGHTS_FILE, is_state_dict_model

#: Files a model folder (not a training run) may hold, in the order the engine tries them.
_MODEL_FILES = ("best_model", "model.pt", "data/model.pth")


def resolve(source: str | Path | Descriptor, meta: ModelMeta | None = None) -> Descriptor:
    """The descriptor of ``source``: itself, a descriptor file or folder (read), or a schnetpack
    model or run (derived by :func:`describe`).
    """
    if isinstance(source, Descriptor):
        return source
    if is_descriptor(source):
        return read_descriptor(source)
    return describe(source, meta)


def describe(path: str | Path, meta: ModelMeta | None = None) -> Descriptor:
    """The descriptor of a schnetpack model file, state-dict folder or training run.

    Args:
        path: a ``torch.save(model)`` file, a folder with ``best_model``/``model.pt``, a
            state-dict folder (``architecture.json`` + ``state_dict.pt``) or its
            ``architecture.json``, or a schnetpack training run (``best_model`` + ``config.yaml``).
        meta: metadata given explicitly; only the fields set in it count.

    Raises:
        ModelLoadError: nothing loadable at ``path``.
        MetadataError: contradictory or unknown metadata.
    """
    path = Path(path)
    given = _given(meta)
    if is_training_run(path):
        run = read_training_run(path)
        data = merge_meta(run, given, {k: f"the given metadata ({k})" for k in given})
        return _schnetpack(data, [run.model_path.name], path, f"{run.config_path}")
    if is_state_dict_model(path):
        folder = path if path.is_dir() else path.parent
        return _schnetpack(given, [SPEC_FILE, WEIGHTS_FILE], folder, str(folder / SPEC_FILE))
    root, file = _model_file(path)
    data = {**read_sidecar(root / file), **given}
    return _schnetpack(data, [file], root, str(root / file))


def sidecar_path(model: Path) -> Path:
    """``<model>.json``: where a model file's metadata sits beside it."""
    return model.with_suffix(".json") if model.suffix else Path(str(model) + ".json")


def read_sidecar(model: Path, path: Path | None = None) -> dict[str, Any]:
    """Model metadata from a JSON file: ``path``, or ``<model>.json`` beside the model file
    (``{}`` when that one does not exist).

    Raises:
        MetadataError: ``path`` is given and missing, or the file is not a JSON object.
    """
    if path is not None and not path.is_file():
        raise MetadataError(f"metadata file not found: {path}")
    path = path or sidecar_path(model)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MetadataError(f"metadata file {path} is not JSON ({e})") from e
    if not isinstance(data, dict):
        raise MetadataError(f"metadata file {path} must hold a JSON object")
    return data


def _given(meta: ModelMeta | None) -> dict[str, Any]:
    """The fields set explicitly in ``meta``."""
    if meta is None:
        return {}
    return {k: getattr(meta, k) for k in meta.model_fields_set if getattr(meta, k) is not None}


def _model_file(path: Path) -> tuple[Path, str]:
    """The folder and the name in it of the model file at ``path`` (a file, or the first model
    file in a folder).
    """
    if path.is_dir():
        found = [n for n in _MODEL_FILES if (path / n).is_file()]
        if not found:
            raise ModelLoadError(f"{path} is a folder without {DESCRIPTOR_FILE}, best_model or model.pt in it")
        return path, found[0]
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    return path.parent, path.name


def _schnetpack(data: dict[str, Any], weights: list[str], root: Path, source: str) -> Descriptor:
    """A schnetpack descriptor from :class:`ModelMeta`-style metadata."""
    record: dict[str, Any] = {
        "framework": Framework.SCHNETPACK.value, "weights": weights,
        "energy_unit": data.get("energy_unit", "eV"), "length_unit": data.get("position_unit", "Angstrom"),
        "kwargs": {k: data[k] for k in ("energy_key", "forces_key") if data.get(k) is not None},
    }
    for key in ("cutoff_A", "level_of_theory"):
        if data.get(key) is not None:
            record[key] = data[key]
    return parse_descriptor(record, f"metadata of {source}", root)
