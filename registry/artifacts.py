"""Download a version's model (a schnetpack file artifact or an ``mlflow.pytorch`` model) and
the validation sets a registered model names for itself.

Problems with what a version holds are engine input errors (the gate ends as Error); registry
outages are :class:`~registry.errors.TransientRegistryError`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import mlflow.artifacts
import yaml
from pydantic import ValidationError

from mdgate.errors import MetadataError, ModelLoadError, MoleculeSetError
from mdgate.potentials import ModelMeta
from mdgate.potentials.spec import SPEC_FILE
from mdgate.results import ValidationResult
from registry import types as T
from registry.client import Registry
from registry.connection import translate_errors
from registry.errors import HostStorageError, RegistryError, TransientRegistryError
from registry.flavor import descriptor_path
from registry.types import Candidate, VersionInfo

#: Files of an MLflow model folder that are never the model itself.
NOT_MODELS = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
              "serving_input_example.json", "registered_model_meta", "pickle_module_info.txt"}
MODEL_NAMES = ("best_model", "model.pt", "model.pth")
#: Bytes the gate writes (and removes) before a download, to tell a full disk from a missing artifact.
PROBE_BYTES = 1 << 20
LOCAL_WRITE_ERROR = re.compile(r"\[Errno (28|30|122|27|20|21|13)\][^\n#]*?(?=[\n'\":]|$)")
URI_PREFIXES = ("runs:/", "models:/", "mlflow-artifacts:", "s3://", "gs://", "wasbs://", "http://",
                "https://", "file://", "hdfs://", "dbfs:/")


def download(registry: Registry, artifact_uri: str, dst: Path, what: str) -> Path:
    """Download ``artifact_uri`` into ``dst``.

    Raises:
        ModelLoadError: the artifact is missing or cannot be read.
        HostStorageError: the gate host cannot write ``dst`` (disk full, read-only).
        TransientRegistryError: the tracking server could not be reached.
    """
    try:
        with translate_errors(f"downloading {what}"):
            dst.mkdir(parents=True, exist_ok=True)
            # MLflow hides local write errors of some downloads behind "path not found": a full
            # disk must not read as a missing model, so try writing first.
            probe = dst / ".mdgate-write-probe"
            try:
                probe.write_bytes(b"\0" * PROBE_BYTES)
            finally:
                probe.unlink(missing_ok=True)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=str(dst),
                tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri,
            )
    except TransientRegistryError as e:
        # MLflow reports failed local writes inside its own error: retrying does not free space
        found = LOCAL_WRITE_ERROR.search(str(e.__cause__ or e))
        if found:
            raise HostStorageError(f"downloading {what}: the gate host cannot write {dst} "
                                   f"({found.group(0)})") from e
        raise
    except HostStorageError:
        raise
    except RegistryError as e:
        cause = str(e.__cause__ or e).splitlines()[0][:200]
        raise ModelLoadError(f"{what} is missing or unreadable at {artifact_uri} ({cause})") from e
    return Path(local)


def find_model_file(path: Path, source: str) -> Path:
    """The model file in a downloaded version: the folder of a state-dict model
    (``architecture.json`` + ``state_dict.pt``), the ``mlflow.pytorch`` pickle, or the one
    schnetpack/torch file of a plain artifact folder.

    Raises:
        ModelLoadError: no model file, an unsupported format, or several candidates.
    """
    if path.is_file():
        return path
    if (descriptor := descriptor_path(path)) is not None:  # a model logged with mdgate's flavor
        return descriptor
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    if not files:
        raise ModelLoadError(f"the version's model artifact is missing: nothing found at {source}")
    specs = [p for p in files if p.name == SPEC_FILE]
    if len(specs) == 1:  # weights + architecture spec, loaded with weights_only=True
        return specs[0].parent
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():
        try:
            flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
        except yaml.YAMLError as e:
            raise ModelLoadError(f"MLmodel of {source} is not valid YAML ({e})") from e
        torch_flavor = flavors.get("pytorch")
        if torch_flavor is None:
            raise ModelLoadError(
                f"{source} is an MLflow model without the pytorch flavor (flavors: {sorted(flavors)}); "
                "log a schnetpack model with mlflow.pytorch or `mdgate register`"
            )
        data = path / str(torch_flavor.get("model_data", "data"))
        if (data / "model.pth").is_file():
            return data / "model.pth"
        if (data / "model.pt2").is_file():
            raise ModelLoadError(
                f"{source} was logged with serialization_format='pt2' (torch.export), which cannot "
                "give forces by autograd; log it with serialization_format='pickle' or `mdgate register`"
            )
        raise ModelLoadError(f"{source}: MLmodel names {data.name}/ but it holds no model.pth")
    candidates = [p for p in files
                  if p.name not in NOT_MODELS and not p.name.endswith((".json", ".yaml", ".txt", ".md"))]
    named = [p for p in candidates if p.name in MODEL_NAMES or p.suffix in (".pt", ".pth")]
    chosen = named or candidates
    if len(chosen) != 1:
        names = sorted(str(p.relative_to(path)) for p in (chosen or files))
        raise ModelLoadError(
            f"cannot tell which file of {source} is the model ({', '.join(names[:6]) or 'none'}); "
            "register one torch.save(model) file or an mlflow.pytorch model"
        )
    return chosen[0]


#: Metadata whose empty value is an error (units, output keys, cutoff): the engine depends on them.
REQUIRED_IF_PRESENT = (T.ENERGY_UNIT, T.POSITION_UNIT, T.ENERGY_KEY, T.FORCES_KEY, T.CUTOFF_A)


def registered_metadata(registry: Registry, info: VersionInfo) -> dict[str, str]:
    """The ``mdgate.*`` metadata of a version: its source run's params (``mdgate register`` logs
    them there), overridden by version tags of the same name.

    Raises:
        TransientRegistryError: the tracking server could not be reached.
    """
    values: dict[str, str] = {}
    if info.run_id:
        try:
            with translate_errors(f"reading run {info.run_id}"):
                params = registry.client.get_run(info.run_id).data.params
            values.update({k: v for k, v in params.items() if k.startswith("mdgate.")})
        except TransientRegistryError:
            raise
        except RegistryError:
            pass  # a deleted source run only loses the params it held
    values.update({k: v for k, v in info.tags.items() if k in T.META_TAGS or k == T.N_PARAMETERS})
    return values


def version_meta(registry: Registry, info: VersionInfo) -> ModelMeta:
    """Model metadata of a version (:func:`registered_metadata`).

    Raises:
        MetadataError: a value does not validate, or a unit, key or cutoff is empty (named
            with the tag).
    """
    values = registered_metadata(registry, info)
    name, version = info.name, info.version
    # An absent tag takes its documented default; a tag that is there but empty says nothing.
    empty = [tag for tag in REQUIRED_IF_PRESENT if tag in values and not str(values[tag]).strip()]
    if empty:
        raise MetadataError(f"{name}/{version}: tag {empty[0]} is empty; give its value, or remove the tag "
                            "to use the documented default")
    data = {field: values[tag] for tag, field in T.META_TAGS.items() if values.get(tag) not in (None, "")}
    try:
        meta = ModelMeta.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0])
        tag = next(t for t, f in T.META_TAGS.items() if f == field)
        raise MetadataError(f"{name}/{version}: tag {tag} = {err.get('input')!r}: {err['msg']}") from e
    if meta.parent and meta.parent_n_parameters is None:
        meta.parent_n_parameters = parent_parameters(registry, meta.parent)
    return meta


def parent_parameters(registry: Registry, parent: str) -> int | None:
    """``mdgate.n_parameters`` of a registered parent ``name/version``, if it is known."""
    pname, _, pversion = parent.rpartition("/")
    if not pname or not pversion.isdigit():
        return None
    try:
        value = registered_metadata(registry, registry.get_version(pname, pversion)).get(T.N_PARAMETERS)
    except TransientRegistryError:
        raise
    except RegistryError:
        return None
    return int(value) if value and value.isdigit() else None


def resolve_set(registry: Registry, value: str, dst: Path, what: str) -> Path:
    """A validation/reference set named by a registered-model tag: an artifact URI (downloaded)
    or a path on the gate host.

    Raises:
        MoleculeSetError: missing or not downloadable.
    """
    if value.startswith(URI_PREFIXES):
        try:
            local = download(registry, value, dst, f"the {what} set")
        except ModelLoadError as e:
            raise MoleculeSetError(str(e)) from e
        if local.is_dir():
            files = [p for p in local.rglob("*") if p.is_file()]
            if len(files) != 1:
                raise MoleculeSetError(f"{what} set {value} must be one file, found {len(files)}")
            local = files[0]
        return local
    path = Path(value).expanduser()
    if not path.is_file():
        raise MoleculeSetError(f"{what} set {value} (registered-model tag) not found on the gate host")
    return path


def fetch_candidate(registry: Registry, name: str, version: str, work_dir: Path) -> Candidate:
    """Download a version's model and metadata, and its model's own validation sets.

    Raises:
        ModelLoadError: the model artifact is missing or not a supported format.
        MetadataError: a metadata tag does not validate.
        MoleculeSetError: a set named by a registered-model tag is missing.
        TransientRegistryError: the tracking server could not be reached.
    """
    info = registry.get_version(name, version)
    with translate_errors(f"locating {name}/{version}"):
        uri = registry.client.get_model_version_download_uri(name, version)
    # Not models:/name/version: MLflow resolves that through the global registry URI.
    local = download(registry, uri, work_dir / "model", f"model {name}/{version}")
    model_path = find_model_file(local, uri)
    meta = version_meta(registry, info)
    model_tags = registry.model_tags(name)
    sets: dict[str, Path | None] = {}
    sources: dict[str, str | None] = {}
    for key, tag in (("molecules", T.MOLECULES), ("reference", T.REFERENCE)):
        value = model_tags.get(tag)
        sources[key] = value or None
        sets[key] = resolve_set(registry, value, work_dir / key, key) if value else None
    return Candidate(name=name, version=str(version), model_path=model_path, meta=meta,
                     molecules=sets["molecules"], reference=sets["reference"],
                     molecules_source=sources["molecules"], reference_source=sources["reference"])


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stored_result(registry: Registry, info: VersionInfo, dst: Path) -> ValidationResult | None:
    """The ``results.json`` of a version's validation run (named in ``mdgate.report``), or ``None``
    when it has none or it cannot be read as a result.
    """
    if not info.validation_run:
        return None
    dst.mkdir(parents=True, exist_ok=True)
    try:
        with translate_errors(f"reading results.json of {info.ref}"):
            local = registry.client.download_artifacts(info.validation_run, "results.json", str(dst))
    except TransientRegistryError:
        raise
    except RegistryError:
        return None
    try:
        return ValidationResult.model_validate_json(Path(local).read_text())
    except (ValidationError, OSError):
        return None
