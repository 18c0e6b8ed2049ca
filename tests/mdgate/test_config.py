"""Gate config: strict validation, errors that name file, field and value, and the sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mdgate.config import GateConfig, load_config, parse_config
from mdgate.errors import ConfigError


def test_defaults_are_the_designed_ones() -> None:
    cfg = load_config(None)
    assert cfg == GateConfig()
    assert cfg.md.timestep_fs == 0.5 and cfg.md.temperature_K == 300.0
    assert cfg.criteria.max_bond_deviation_A.bound == 0.5 and cfg.criteria.max_bond_deviation_A.required
    assert cfg.criteria.min_force_r2.bound == 0.95
    assert not cfg.criteria.total_drift_percent.required  # the % figure depends on the energy zero


def test_a_yaml_file_is_applied_and_relative_paths_resolve_against_it(write_config) -> None:
    path = write_config({"md": {"n_steps": 123, "temperature_K": 500},
                         "criteria": {"max_bond_deviation_A": {"bound": 0.4}},
                         "molecules": "sets/mols.extxyz"})
    cfg = load_config(path)
    assert cfg.md.n_steps == 123 and cfg.md.temperature_K == 500.0
    assert cfg.criteria.max_bond_deviation_A.bound == 0.4
    assert cfg.criteria.max_bond_deviation_A.required  # unchanged default
    assert cfg.molecules == (path.parent / "sets" / "mols.extxyz").resolve()
    assert cfg.reference is None


def test_an_empty_file_gives_the_defaults(write_config) -> None:
    assert load_config(write_config({}, "empty.yaml")) == GateConfig()  # "{}"
    blank = write_config({}, "blank.yaml")
    blank.write_text("")
    assert load_config(blank) == GateConfig()


@pytest.mark.parametrize("data, field, value, what", [
    ({"md": {"timestep_fs": -0.5}}, "md.timestep_fs", "-0.5", "greater than 0"),
    ({"md": {"n_stepz": 5}}, "md.n_stepz", "5", "unknown key"),
    ({"mdd": {}}, "mdd", "{}", "unknown key"),
    ({"md": {"n_steps": "many"}}, "md.n_steps", "'many'", "integer"),
    ({"md": {"device": "tpu"}}, "md.device", "'tpu'", "auto"),
    ({"criteria": {"max_bond_deviation_A": {"bound": 0.5, "requird": True}}},
     "criteria.max_bond_deviation_A.requird", "True", "unknown key"),
])
def test_invalid_values_name_the_file_the_field_and_the_value(
        write_config, data: dict, field: str, value: str, what: str) -> None:
    path = write_config(data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg
    assert f"'{field}'" in msg
    assert f"= {value}" in msg
    assert what in msg
    assert "\n" not in msg


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("md:\n  n_steps: 10\n  temperature_K: [300\n")
    with pytest.raises(ConfigError, match="malformed YAML") as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_a_list_at_the_top_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- md\n- criteria\n")
    with pytest.raises(ConfigError, match=r"expected a mapping.*got list"):
        load_config(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_sha256_is_of_the_canonical_applied_config() -> None:
    a = parse_config({"md": {"n_steps": 100}})
    b = parse_config({"md": {"n_steps": 100.0, "seed": 0}})
    c = parse_config({"md": {"n_steps": 101}})
    assert a.sha256() == b.sha256() != c.sha256()
    canonical = json.dumps(a.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    assert a.sha256() == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_packaged_protocol_file_is_the_default() -> None:
    """mdgate/data/protocol.yaml documents the defaults: it must load to exactly them."""
    from mdgate.molecules import packaged_path

    assert load_config(packaged_path("protocol.yaml")) == GateConfig()


def test_every_stage_and_check_can_be_switched_and_bounded() -> None:
    cfg = parse_config({"stress": {"enabled": False}, "sanity": {"required": False},
                        "oracle": {"criteria": {"min_force_r2": {"bound": 0.8, "required": False}}},
                        "criteria": {"min_distance_A": {"bound": 0.7, "enabled": False}}})
    assert not cfg.stress.enabled and not cfg.sanity.required
    assert cfg.oracle.criteria.min_force_r2.bound == 0.8
    assert cfg.criteria.min_distance_A.enabled is False
    with pytest.raises(ConfigError, match=r"stress\.criteria\.max_bond_deviation_AA.*unknown key"):
        parse_config({"stress": {"criteria": {"max_bond_deviation_AA": {"bound": 1}}}})
