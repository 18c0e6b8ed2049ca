"""schnetpack training runs as input: a folder written by ``spktrain`` (schnetpack 2.2), holding
``best_model`` and the hydra ``config.yaml`` of the run.

The metadata the gate needs is read from the training config, never guessed:

| metadata | config key (schnetpack 2.2 layout) |
|---|---|
| ``energy_key``, ``forces_key`` | ``globals.energy_key``, ``globals.forces_key`` (default ``energy``, ``forces``) |
| ``energy_unit`` | ``data.property_units.<energy_key>`` (e.g. ``kcal/mol`` in the md17 experiment) |
| ``position_unit`` | ``data.distance_unit`` (e.g. ``Ang``) |
| ``cutoff_A`` | ``globals.cutoff`` × the distance unit |

schnetpack converts the training data to ``data.property_units`` and ``data.distance_unit`` when
it loads them, so the model's outputs are in those units. ``spktrain`` saves the config
unresolved (``${globals.energy_key}``): interpolations are resolved here with omegaconf (a
schnetpack dependency), for the keys above only (others, such as ``${hydra:runtime.cwd}``, need
hydra's runtime and are never touched). The forces unit, when given, must be the energy unit per
distance unit. A value given explicitly (an option or the JSON sidecar) that contradicts the
config is an error naming both values: :func:`merge_meta`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdgate.errors import MetadataError
from mdgate.units import ENERGY_TO_EV, LENGTH_TO_ANGSTROM, energy_factor, length_factor

#: A whole-string reference to another config key, ``${globals.energy_key}`` (not a resolver call).
_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][\w.]*\}")

CONFIG_FILE = "config.yaml"
MODEL_FILE = "best_model"

#: Canonical unit names (as in :mod:`mdgate.units`) that config units are mapped to.
_ENERGY_NAMES = ("eV", "meV", "kcal/mol", "kJ/mol", "Hartree", "Rydberg")
_LENGTH_NAMES = ("Angstrom", "Bohr", "nm")


@dataclass
class TrainingRun:
    """A schnetpack training folder and the metadata its config declares.

    Attributes:
        folder: the run folder.
        model_path: its ``best_model``.
        config_path: its ``config.yaml``.
        meta: the :class:`~mdgate.potentials.ModelMeta` fields the config declares.
        sources: for each key of ``meta``, the config key it was read from, with its value.
    """

    folder: Path
    model_path: Path
    config_path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def put(self, meta_key: str, value: Any, source: str) -> None:
        """Record a metadata value and the config key (with its value) it was read from."""
        self.meta[meta_key] = value
        self.sources[meta_key] = source


def is_training_run(path: str | Path) -> bool:
    """Is ``path`` a folder with ``best_model`` and ``config.yaml`` (a schnetpack run)?"""
    path = Path(path)
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file()


def _read_energy_units(run: TrainingRun, get: Callable[[str], Any], energy_key: str, forces_key: str,
                       distance: Any, length_A: float) -> None:
    """The energy unit of a training run (``data.property_units``), checked against its forces unit.

    Raises:
        MetadataError: the units are not a mapping, a unit is unknown, or the forces unit is not
            the energy unit per distance unit.
    """
    config_path = run.config_path
    units = get("data.property_units") or {}
    if not isinstance(units, dict):
        raise MetadataError(f"{config_path}: data.property_units must be a mapping, not {units!r}")
    # omegaconf resolves values, not keys: a key such as ${globals.energy_key} is resolved here.
    units = {str(get(k[2:-1])) if _INTERPOLATION.fullmatch(str(k)) else str(k): v for k, v in units.items()}
    energy = units.get(energy_key)
    if energy is not None:
        name, energy_eV = _canonical(str(energy), _ENERGY_NAMES, energy_factor, "energy", config_path,
                                     f"data.property_units.{energy_key}")
        run.put("energy_unit", name, f"data.property_units.{energy_key} = {energy}")
        forces = units.get(forces_key)
        if forces is not None:
            forces_eV_per_A = _spk_factor(str(forces), "eV/Ang")
            expected = energy_eV / length_A
            if forces_eV_per_A is None or not math.isclose(forces_eV_per_A, expected, rel_tol=1e-6):
                raise MetadataError(
                    f"{config_path}: data.property_units.{forces_key} = {forces} is not "
                    f"data.property_units.{energy_key} per data.distance_unit ({energy}/{distance or 'Ang'}); "
                    "mdgate takes forces as -dE/dR of the energy output"
                )


def read_training_run(path: str | Path) -> TrainingRun:
    """Read the metadata of a schnetpack training run from its ``config.yaml``.

    Raises:
        MetadataError: the config cannot be read, an interpolation cannot be resolved, a unit is
            unknown, or the forces unit is not the energy unit per distance unit.
    """
    from omegaconf import OmegaConf

    folder = Path(path)
    config_path = folder / CONFIG_FILE
    if not is_training_run(folder):
        raise MetadataError(f"{folder} is not a schnetpack training run (it needs {MODEL_FILE} and {CONFIG_FILE})")
    try:
        cfg = OmegaConf.load(config_path)
    except Exception as e:  # yaml and omegaconf raise several types
        raise MetadataError(f"{config_path} is not a readable YAML config ({str(e).splitlines()[0][:160]})") from e
    run = TrainingRun(folder, folder / MODEL_FILE, config_path)

    def get(key: str) -> Any:
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except Exception as e:
            raise MetadataError(f"{config_path}: cannot resolve {key} ({str(e).splitlines()[0][:160]})") from e
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    keys = {}
    for meta_key, key, default in (("energy_key", "globals.energy_key", "energy"),
                                   ("forces_key", "globals.forces_key", "forces")):
        value = get(key)
        keys[meta_key] = str(value or default)
        run.put(meta_key, keys[meta_key], f"{key} = {value}" if value else f"(no {key}: schnetpack's default)")
    energy_key, forces_key = keys["energy_key"], keys["forces_key"]

    distance = get("data.distance_unit")
    length_A = 1.0
    if distance is not None:
        name, length_A = _canonical(str(distance), _LENGTH_NAMES, length_factor, "distance", config_path,
                                    "data.distance_unit")
        run.put("position_unit", name, f"data.distance_unit = {distance}")
    _read_energy_units(run, get, energy_key, forces_key, distance, length_A)
    cutoff = get("globals.cutoff")
    if cutoff is None:
        cutoff = get("model.representation.cutoff_fn.cutoff")
    if cutoff is not None:
        try:
            run.put("cutoff_A", float(cutoff) * length_A, f"globals.cutoff = {cutoff} {distance or 'Ang'}")
        except (TypeError, ValueError) as e:
            raise MetadataError(f"{config_path}: globals.cutoff = {cutoff!r} is not a number") from e
    return run


def merge_meta(run: TrainingRun, given: dict[str, Any], sources: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's metadata with ``given`` (options, a JSON sidecar) added.

    A given value that says the same as the config (the same unit under another name, the same
    cutoff) is fine; one that contradicts it is an error.

    Args:
        run: the training run.
        given: metadata given explicitly.
        sources: for each key of ``given``, what gave it (e.g. ``--energy-unit``), for messages.

    Raises:
        MetadataError: naming the config key and its value, and the option and its value.
    """
    sources = sources or {}
    merged = dict(run.meta)
    for key, value in given.items():
        if value is None:
            continue
        if key in run.meta and not _same(key, run.meta[key], value):
            by = sources.get(key, f"the given metadata ({key})")
            raise MetadataError(
                f"contradictory metadata: the training config {run.config_path} says {run.sources[key]}, "
                f"but {by} says {key} = {value}; drop {by} or fix the config"
            )
        merged[key] = value if key not in run.meta else run.meta[key]
    return merged


def _same(key: str, ours: Any, theirs: Any) -> bool:
    try:
        if key == "energy_unit":
            return math.isclose(energy_factor(str(theirs)), energy_factor(str(ours)), rel_tol=1e-9)
        if key == "position_unit":
            return math.isclose(length_factor(str(theirs)), length_factor(str(ours)), rel_tol=1e-9)
        if key == "cutoff_A":
            return math.isclose(float(theirs), float(ours), rel_tol=1e-6)
    except (TypeError, ValueError):
        return False
    return str(theirs) == str(ours)


def _canonical(unit: str, names: tuple[str, ...], factor: Any, what: str, config_path: Path,
               key: str) -> tuple[str, float]:
    """Map a config unit (mdgate's spelling, or anything schnetpack's unit parser reads) to
    mdgate's canonical name and its factor to eV (or Å).
    """
    table = ENERGY_TO_EV if what == "energy" else LENGTH_TO_ANGSTROM
    value = table.get(unit)
    if value is None:
        value = _spk_factor(unit, "eV" if what == "energy" else "Ang")
    if value is not None:
        for name in names:
            if math.isclose(factor(name), value, rel_tol=1e-6):
                return name, value
    raise MetadataError(f"{config_path}: {key} = {unit!r} is not a {what} unit mdgate knows; "
                        f"known: {', '.join(names)}")


def _spk_factor(unit: str, base: str) -> float | None:
    """``unit`` in ``base`` units with schnetpack's own unit parser (``None`` if it cannot read it)."""
    from schnetpack.units import unit2internal

    try:
        return float(unit2internal(unit)) / float(unit2internal(base))
    except Exception:  # the parser raises KeyError, ValueError, ... for unknown units
        return None
