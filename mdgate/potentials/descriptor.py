"""The model descriptor: what a registered potential is, in a small versioned YAML beside its weights.

A descriptor says which framework loads the model (:class:`Framework`), with which callable and
arguments, which weight files belong to it, the units of its outputs, the elements it covers,
its cutoff, the level of theory it was trained on and the Python requirements it needs. It is
stored with every registered version (``mdgate.yaml``) and summarised in tags (:meth:`Descriptor.tags`).

Minimal form::

    framework: ase
    loader: some_module:make_calculator   # returns an ase Calculator
    kwargs: {}
    energy_unit: eV
    length_unit: Angstrom
    level_of_theory: wB97X/6-31G(d)

Read one with :func:`read_descriptor` (a YAML file, or a folder holding ``mdgate.yaml``); a
schnetpack model file or training run gets one derived from it by
:func:`mdgate.potentials.describe.describe`. Every error names the file, the field and the value.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final, Literal

import yaml
from ase.data import atomic_numbers, chemical_symbols
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mdgate.errors import MetadataError, ModelLoadError
from mdgate.potentials import ModelMeta
from mdgate.units import energy_factor, length_factor

#: The file name of a descriptor inside a model folder.
DESCRIPTOR_FILE = "mdgate.yaml"
#: The schema version this mdgate writes and reads.
SCHEMA_VERSION: Final = 1
#: ``module:callable``, dotted on both sides.
_LOADER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: The kwargs a schnetpack descriptor may carry (the output keys of the model's dict).
_SCHNETPACK_KWARGS = frozenset({"energy_key", "forces_key"})


class Framework(StrEnum):
    """How a model is loaded and called; each has an adapter behind :class:`~mdgate.potentials.Potential`."""

    SCHNETPACK = "schnetpack"
    """A schnetpack ``NeuralNetworkPotential`` (dict in, dict out), batched."""
    ASE = "ase"
    """Any ASE ``Calculator``, called per molecule (the fallback)."""
    ANI = "ani"
    """A torchani model (``model((species, coordinates)).energies``), batched."""
    TORCHSIM = "torchsim"
    """A TorchSim ``ModelInterface`` (``model(state)`` → energy, forces), batched."""


class Descriptor(BaseModel):
    """A registered potential, described: how to load it and what its outputs mean."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Version of this record's schema (this mdgate reads 1).")
    framework: Framework = Field(description="The adapter that loads and calls the model.")
    loader: str | None = Field(
        default=None, description="``module:callable`` that builds the model (ase: a Calculator; ani: a "
        "torchani module; schnetpack: optional, an nn.Module). It gets ``kwargs``, plus ``weights`` "
        "(absolute paths) when the descriptor lists weights and ``device`` when it takes one.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the loader.")
    weights: list[str] = Field(
        default_factory=list, description="Weight files, relative to the descriptor's folder (schnetpack: the "
        "model file first, e.g. ``best_model`` or ``architecture.json``).")
    energy_unit: str = Field(description="Unit of the model's energies (eV, meV, kcal/mol, kJ/mol, Hartree, ...).")
    length_unit: str = Field(description="Length unit the model takes positions in (Angstrom, Bohr, nm).")
    elements: list[str] | None = Field(
        default=None, description="Chemical symbols the model covers (``None``: not declared).")
    cutoff_A: Annotated[float, Field(gt=0, le=100)] | None = Field(
        default=None, description="Interaction cutoff in Å (``None``: read from the model where it can be).")
    level_of_theory: str | None = Field(
        default=None, description="The reference method the model was trained on, e.g. ``wB97X/6-31G(d)``.")
    requirements: list[str] = Field(
        default_factory=list, description="pip requirement specifiers the loader needs, e.g. ``torchani==2.2.4``.")
    _root: Path | None = PrivateAttr(default=None)

    @field_validator("loader")
    @classmethod
    def _loader_form(cls, value: str | None) -> str | None:
        if value is not None and not _LOADER.match(value):
            raise ValueError("expected 'module:callable', e.g. 'mdgate.potentials.ani:make_calculator'")
        return value

    @field_validator("energy_unit")
    @classmethod
    def _energy_unit(cls, value: str) -> str:
        energy_factor(value)
        return value

    @field_validator("length_unit")
    @classmethod
    def _length_unit(cls, value: str) -> str:
        length_factor(value)
        return value

    @field_validator("elements")
    @classmethod
    def _symbols(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = [s for s in value if s not in atomic_numbers or s == "X"]
        if unknown:
            raise ValueError(f"not chemical symbols: {unknown}")
        return sorted(set(value), key=lambda s: atomic_numbers[s])

    @field_validator("weights")
    @classmethod
    def _relative(cls, value: list[str]) -> list[str]:
        for name in value:
            p = PurePosixPath(name)
            if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
                raise ValueError(f"{name!r} must be a path relative to the descriptor, inside its folder")
        return value

    @field_validator("requirements")
    @classmethod
    def _pip(cls, value: list[str]) -> list[str]:
        for spec in value:
            try:
                Requirement(spec)
            except InvalidRequirement as e:
                raise ValueError(f"{spec!r} is not a pip requirement ({e})") from e
        return value

    @model_validator(mode="after")
    def _framework_needs(self) -> Descriptor:
        if self.framework in (Framework.ASE, Framework.ANI, Framework.TORCHSIM) and self.loader is None:
            raise ValueError(f"field 'loader' is required for framework '{self.framework}' (a module:callable)")
        if self.framework == Framework.SCHNETPACK:
            if self.loader is None and not self.weights:
                raise ValueError("framework 'schnetpack' needs field 'weights' (the model file) or a 'loader'")
            if self.loader is None and set(self.kwargs) - _SCHNETPACK_KWARGS:
                raise ValueError(f"field 'kwargs' = {self.kwargs!r}: without a loader, schnetpack takes only "
                                 f"{sorted(_SCHNETPACK_KWARGS)}")
        return self

    @property
    def root(self) -> Path | None:
        """The folder the weights are relative to (the descriptor's folder), if known."""
        return self._root

    def with_root(self, root: str | Path) -> Descriptor:
        """This descriptor with its weights relative to ``root``."""
        out = self.model_copy()
        out._root = Path(root).resolve()
        return out

    @property
    def atomic_numbers(self) -> frozenset[int] | None:
        """The covered elements as atomic numbers (``None``: not declared)."""
        return None if self.elements is None else frozenset(atomic_numbers[s] for s in self.elements)

    def weight_paths(self) -> list[Path]:
        """The weight files as absolute paths.

        Raises:
            ModelLoadError: the descriptor has no folder, or a file is missing.
        """
        if not self.weights:
            return []
        if self._root is None:
            raise ModelLoadError(f"descriptor lists weights {self.weights} but has no folder they are relative to")
        paths = [self._root / w for w in self.weights]
        for k, p in enumerate(paths):
            if not p.exists():
                raise ModelLoadError(f"{self._root / DESCRIPTOR_FILE}: field 'weights[{k}]' = "
                                     f"{self.weights[k]!r}: no such file in {self._root}")
        return paths

    def model_meta(self, base: ModelMeta | None = None) -> ModelMeta:
        """The engine's :class:`ModelMeta` of this model, on top of ``base`` (parent, ...).

        Raises:
            MetadataError: a field set explicitly in ``base`` contradicts the descriptor.
        """
        ours: dict[str, Any] = {"energy_unit": self.energy_unit, "position_unit": self.length_unit,
                                "cutoff_A": self.cutoff_A, "level_of_theory": self.level_of_theory}
        if self.framework == Framework.SCHNETPACK and self.loader is None:
            ours.update({k: str(v) for k, v in self.kwargs.items()})
        data = base.model_dump() if base is not None else {}
        for key, value in ours.items():
            given = getattr(base, key) if base is not None and key in base.model_fields_set else None
            if given is not None and value is not None and not _same(key, value, given):
                raise MetadataError(f"contradictory metadata: the descriptor says {_field(key)} = {value!r}, "
                                    f"the given metadata says {key} = {given!r}")
            if value is not None:
                data[key] = value
        return ModelMeta.model_validate(data)

    def summary(self) -> dict[str, str]:
        """The descriptor summarised as ``mdgate.*`` keys (a logged model's params; absent fields
        are left out).
        """
        tags = {"mdgate.descriptor_schema": str(self.schema_version), "mdgate.framework": str(self.framework),
                "mdgate.energy_unit": self.energy_unit, "mdgate.position_unit": self.length_unit}
        if self.loader:
            tags["mdgate.loader"] = self.loader
        if self.elements is not None:
            tags["mdgate.elements"] = ",".join(self.elements)
        if self.cutoff_A is not None:
            tags["mdgate.cutoff_A"] = f"{self.cutoff_A:g}"
        if self.level_of_theory:
            tags["mdgate.level_of_theory"] = self.level_of_theory
        if self.requirements:
            tags["mdgate.requirements"] = " ".join(self.requirements)
        if self.framework == Framework.SCHNETPACK and self.loader is None:
            tags.update({f"mdgate.{k}": str(v) for k, v in sorted(self.kwargs.items())})
        return tags

    def to_yaml(self) -> str:
        """The descriptor as YAML (defaults left out, fields in declaration order)."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        return yaml.safe_dump({"schema_version": self.schema_version, **data}, sort_keys=False)


def _field(key: str) -> str:
    """The descriptor field a :class:`ModelMeta` key comes from."""
    return {"position_unit": "length_unit"}.get(key, key if key not in _SCHNETPACK_KWARGS else f"kwargs.{key}")


def _same(key: str, ours: Any, theirs: Any) -> bool:
    if key == "energy_unit":
        return abs(energy_factor(str(ours)) / energy_factor(str(theirs)) - 1) < 1e-9
    if key == "position_unit":
        return abs(length_factor(str(ours)) / length_factor(str(theirs)) - 1) < 1e-9
    if key == "cutoff_A":
        return abs(float(ours) - float(theirs)) <= 1e-6 * max(float(ours), 1.0)
    return str(ours) == str(theirs)


def is_descriptor(path: str | Path) -> bool:
    """Is ``path`` a descriptor file (``*.yaml``/``*.yml`` that is not a schnetpack run config) or a
    folder holding ``mdgate.yaml``?
    """
    path = Path(path)
    if path.is_dir():
        return (path / DESCRIPTOR_FILE).is_file()
    return path.is_file() and path.suffix in (".yaml", ".yml") and path.name != "config.yaml"


def parse_descriptor(data: Any, source: str, root: str | Path | None = None) -> Descriptor:
    """Validate a mapping into a :class:`Descriptor` whose weights are relative to ``root``.

    Raises:
        MetadataError: naming ``source``, the field and the value.
    """
    if not isinstance(data, dict):
        raise MetadataError(f"{source}: expected a mapping of descriptor fields, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise MetadataError(f"{source}: field 'schema_version' = {version!r}: this mdgate reads schema "
                            f"version {SCHEMA_VERSION}; upgrade mdgate or rewrite the descriptor")
    try:
        descriptor = Descriptor.model_validate(data)
    except ValidationError as e:
        raise MetadataError(_explain(e, source)) from e
    return descriptor.with_root(root) if root is not None else descriptor


def read_descriptor(path: str | Path) -> Descriptor:
    """Read a descriptor from a YAML file or a folder holding ``mdgate.yaml``; its weights are
    relative to the file's folder and must exist.

    Raises:
        MetadataError: the file is missing, is not YAML, or a field does not validate.
        ModelLoadError: a weight file it lists is missing.
    """
    path = Path(path)
    file = path / DESCRIPTOR_FILE if path.is_dir() else path
    if not file.is_file():
        raise MetadataError(f"descriptor not found: {file}")
    try:
        data = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MetadataError(f"{file}:{where} not a YAML descriptor ({problem})") from e
    descriptor = parse_descriptor(data, str(file), file.parent)
    descriptor.weight_paths()
    return descriptor


def write_descriptor(descriptor: Descriptor, folder: str | Path) -> Path:
    """Write ``descriptor`` as ``folder/mdgate.yaml`` (weights are not copied); returns the file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / DESCRIPTOR_FILE
    file.write_text(descriptor.to_yaml())
    return file


def symbol(z: int) -> str:
    """The chemical symbol of atomic number ``z`` (``Z=<z>`` beyond the table)."""
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def _explain(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = f"unknown field; known: {', '.join(Descriptor.model_fields)}"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if first["type"] == "missing":
        about = (Descriptor.model_fields[loc].description or "").split(" (")[0].rstrip(".")
        return f"{source}: field '{loc}' is missing ({about}){more}"
    if not loc:
        return f"{source}: {msg}{more}"
    return f"{source}: field '{loc}' = {first.get('input')!r}: {msg}{more}"
