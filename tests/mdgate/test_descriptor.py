"""The model descriptor: a strict, versioned record read from YAML (a file, or a folder holding
``mdgate.yaml``), with errors that name the file, the field and the value; schnetpack models and
training runs get one derived from their metadata, without loading them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mdgate.errors import MetadataError, ModelLoadError
from mdgate.potentials import ModelMeta
from mdgate.potentials.describe import describe, resolve
from mdgate.potentials.descriptor import (
    DESCRIPTOR_FILE,
    Descriptor,
    Framework,
    is_descriptor,
    parse_descriptor,
    read_descriptor,
    write_descriptor,
)
from mdgate.potentials.spec import SPEC_FILE, WEIGHTS_FILE
from tests.models import GOOD_MODEL

SPK_RUN = Path(__file__).resolve().parents[1] / "data" / "spk_run_kcal"
REPO = Path(__file__).resolve().parents[2]
#: The issue's minimal form.
MINIMAL = {"framework": "ase", "loader": "some_module:make_calculator", "kwargs": {}, "energy_unit": "eV",
           "length_unit": "Angstrom", "level_of_theory": "wB97X/6-31G(d)"}


def write(folder: Path, data: object, name: str = DESCRIPTOR_FILE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(tmp_path: Path, **fields: object) -> str:
    data = {**MINIMAL, **fields}
    path = write(tmp_path / "m", {k: v for k, v in data.items() if v is not None})
    with pytest.raises(MetadataError) as e:
        read_descriptor(path)
    return str(e.value)


def test_the_minimal_form_reads_from_a_file_or_its_folder(tmp_path: Path) -> None:
    path = write(tmp_path / "m", MINIMAL)
    by_file, by_folder = read_descriptor(path), read_descriptor(path.parent)
    assert by_file == by_folder
    assert by_file.framework is Framework.ASE and by_file.schema_version == 1
    assert by_file.root == path.parent.resolve() and by_file.weights == [] and by_file.elements is None
    assert is_descriptor(path) and is_descriptor(path.parent)


@pytest.mark.parametrize(("fields", "named"), [
    ({"energy_unit": "kcal"}, "field 'energy_unit' = 'kcal': unknown energy unit 'kcal'"),
    ({"length_unit": "au"}, "field 'length_unit' = 'au': unknown length unit 'au'"),
    ({"framework": "mace"}, "field 'framework' = 'mace'"),
    ({"loader": "no_colon"}, "field 'loader' = 'no_colon': expected 'module:callable'"),
    ({"elements": ["H", "Xx"]}, "field 'elements' = ['H', 'Xx']: not chemical symbols: ['Xx']"),
    ({"cutoff_A": -1.0}, "field 'cutoff_A' = -1.0"),
    ({"requirements": ["torchani=2.2.4"]}, "field 'requirements' = ['torchani=2.2.4']: 'torchani=2.2.4' is not"),
    ({"weights": ["/abs/model.pt"]}, "field 'weights' = ['/abs/model.pt']: '/abs/model.pt' must be a path relative"),
    ({"weights": ["../model.pt"]}, "must be a path relative to the descriptor"),
    ({"energy_units": "eV"}, "field 'energy_units' = 'eV': unknown field; known: schema_version, framework"),
    ({"energy_unit": None}, "field 'energy_unit' is missing (Unit of the model's energies)"),
    ({"loader": None}, "field 'loader' is required for framework 'ase'"),
    ({"schema_version": 2}, "field 'schema_version' = 2: this mdgate reads schema version 1"),
])
def test_errors_name_the_file_the_field_and_the_value(tmp_path: Path, fields: dict, named: str) -> None:
    message = error_of(tmp_path, **fields)
    assert message.startswith(str(tmp_path / "m" / DESCRIPTOR_FILE) + ": "), message
    assert named in message, message


def test_a_file_that_is_not_a_yaml_mapping_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("framework: [ase\n")
    with pytest.raises(MetadataError, match=r"bad\.yaml: line \d+: not a YAML descriptor"):
        read_descriptor(bad)
    write(tmp_path, ["ase"], "list.yaml")
    with pytest.raises(MetadataError, match=r"list\.yaml: expected a mapping of descriptor fields, got list"):
        read_descriptor(tmp_path / "list.yaml")
    with pytest.raises(MetadataError, match=r"descriptor not found: .*/nothing$"):
        read_descriptor(tmp_path / "nothing")


def test_weights_are_relative_to_the_descriptor_and_must_exist(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    write(folder, {**MINIMAL, "weights": ["w/net.pt"]})
    with pytest.raises(ModelLoadError, match=r"field 'weights\[0\]' = 'w/net.pt': no such file in .*model"):
        read_descriptor(folder)
    (folder / "w").mkdir()
    (folder / "w" / "net.pt").write_bytes(b"x")
    assert read_descriptor(folder).weight_paths() == [(folder / "w" / "net.pt").resolve()]


def test_schnetpack_needs_weights_and_takes_only_its_output_keys(tmp_path: Path) -> None:
    base = {"framework": "schnetpack", "energy_unit": "eV", "length_unit": "Angstrom"}
    with pytest.raises(MetadataError, match="framework 'schnetpack' needs field 'weights'"):
        parse_descriptor(base, "d.yaml")
    with pytest.raises(MetadataError, match=r"field 'kwargs' = \{'dtype': 'float64'\}: without a loader"):
        parse_descriptor({**base, "weights": ["m.pt"], "kwargs": {"dtype": "float64"}}, "d.yaml")
    d = parse_descriptor({**base, "weights": ["m.pt"], "kwargs": {"energy_key": "E"}}, "d.yaml")
    assert d.model_meta().energy_key == "E"


def test_elements_are_kept_in_periodic_order_and_round_trip_through_yaml(tmp_path: Path) -> None:
    d = parse_descriptor({**MINIMAL, "elements": ["O", "H", "C", "N", "H"], "cutoff_A": 5.2,
                          "requirements": ["torchani==2.2.4"]}, "x")
    assert d.elements == ["H", "C", "N", "O"] and d.atomic_numbers == frozenset({1, 6, 7, 8})
    again = read_descriptor(write_descriptor(d, tmp_path / "copy"))
    assert again.model_dump() == d.model_dump() and again.root == (tmp_path / "copy").resolve()
    assert yaml.safe_load((tmp_path / "copy" / DESCRIPTOR_FILE).read_text())["schema_version"] == 1


def test_tags_summarise_the_descriptor() -> None:
    d = parse_descriptor({**MINIMAL, "elements": ["H", "C"], "cutoff_A": 5.2}, "x")
    assert d.summary() == {
        "mdgate.descriptor_schema": "1", "mdgate.framework": "ase", "mdgate.energy_unit": "eV",
        "mdgate.position_unit": "Angstrom", "mdgate.loader": "some_module:make_calculator",
        "mdgate.elements": "H,C", "mdgate.cutoff_A": "5.2", "mdgate.level_of_theory": "wB97X/6-31G(d)"}


def test_model_meta_keeps_given_facts_and_refuses_contradictions() -> None:
    d = parse_descriptor({**MINIMAL, "energy_unit": "Hartree", "length_unit": "Bohr", "cutoff_A": 5.2}, "x")
    meta = d.model_meta(ModelMeta(parent="teacher/3", energy_unit="Ha"))
    assert (meta.energy_unit, meta.position_unit, meta.cutoff_A, meta.parent) == ("Hartree", "Bohr", 5.2, "teacher/3")
    with pytest.raises(MetadataError, match="the descriptor says energy_unit = 'Hartree', the given metadata "
                                            "says energy_unit = 'eV'"):
        d.model_meta(ModelMeta(energy_unit="eV"))
    with pytest.raises(MetadataError, match="descriptor says length_unit = 'Bohr'"):
        d.model_meta(ModelMeta(position_unit="Angstrom"))
    assert d.model_meta(ModelMeta()).energy_unit == "Hartree"  # defaults are not explicit


def test_a_model_file_is_described_from_its_sidecar_and_the_given_metadata(tmp_path: Path) -> None:
    d = describe(GOOD_MODEL)
    sidecar = json.loads(GOOD_MODEL.with_suffix(".json").read_text())
    assert d.framework is Framework.SCHNETPACK and d.loader is None
    assert d.weights == [GOOD_MODEL.name] and d.weight_paths() == [GOOD_MODEL.resolve()]
    assert (d.energy_unit, d.length_unit, d.cutoff_A, d.level_of_theory) == (
        sidecar["energy_unit"], sidecar["position_unit"], sidecar["cutoff_A"], sidecar["level_of_theory"])
    assert d.kwargs == {"energy_key": "energy", "forces_key": "forces"}
    bare = tmp_path / "bare.pt"
    shutil.copy(GOOD_MODEL, bare)
    assert (describe(bare).energy_unit, describe(bare).length_unit, describe(bare).cutoff_A) == ("eV", "Angstrom", None)
    assert describe(bare, ModelMeta(energy_unit="kcal/mol")).energy_unit == "kcal/mol"
    assert resolve(bare) == describe(bare)


def test_a_training_run_is_described_from_its_config(tmp_path: Path) -> None:
    d = describe(SPK_RUN)
    assert (d.energy_unit, d.length_unit, d.cutoff_A, d.weights) == ("kcal/mol", "Angstrom", 5.0, ["best_model"])
    assert d.root == SPK_RUN.resolve() and not is_descriptor(SPK_RUN / "config.yaml")
    with pytest.raises(MetadataError, match=r"the training config .* says data\.property_units\.energy = kcal/mol"):
        describe(SPK_RUN, ModelMeta(energy_unit="eV"))


def test_a_state_dict_folder_is_described_by_its_two_files(tmp_path: Path) -> None:
    folder = tmp_path / "sd"
    folder.mkdir()
    (folder / SPEC_FILE).write_text("{}")
    (folder / WEIGHTS_FILE).write_bytes(b"")
    d = describe(folder)
    assert d.weights == [SPEC_FILE, WEIGHTS_FILE] and describe(folder / SPEC_FILE) == d


def test_nothing_to_describe_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        describe(tmp_path / "missing.pt")
    with pytest.raises(ModelLoadError, match=r"is a folder without mdgate\.yaml, best_model or model\.pt"):
        describe(tmp_path)


def test_the_example_descriptors_validate() -> None:
    for path in sorted((REPO / "examples" / "ani1x").glob("*.yaml")):
        d = read_descriptor(path)
        assert isinstance(d, Descriptor) and d.requirements, path


def test_tags_of_a_schnetpack_descriptor_name_its_output_keys() -> None:
    tags = describe(GOOD_MODEL).summary()
    assert tags["mdgate.energy_key"] == "energy" and tags["mdgate.forces_key"] == "forces"
    assert tags["mdgate.cutoff_A"] == "5" and tags["mdgate.framework"] == "schnetpack"
