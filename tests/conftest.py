"""Shared test setup: torch pinned to one CPU thread and float32, seeds, and small inputs built in
code (an untrained PaiNN file, a two-molecule validation set with its reference frames).

The machine is small and shared: every MD run in the default suite is tens to a few hundred
steps on a few molecules.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.io import write

from mdgate.molecules import Molecule, ReferenceSet, read_molecules, read_reference
from tests.models import GOOD_MODEL, MODEL_META, build_painn, fit_atomrefs, save_model

#: Fixtures of the gate's integration tests (MLflow/Prefect servers, mdgate serve).
pytest_plugins = ["tests.integration"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cpu")
DTYPE = torch.float32
#: Molecules of the small validation set used by the end-to-end tests.
SMALL_SET = ("ethanol", "malonaldehyde")
#: Reference frames kept per molecule in the small reference set.
FRAMES_PER_MOLECULE = 20


@pytest.fixture(scope="session", autouse=True)
def _pin_torch() -> None:
    """One thread (the machine is shared; results must not depend on threading), float32."""
    torch.set_num_threads(1)
    torch.set_default_dtype(DTYPE)


@pytest.fixture(scope="session", autouse=True)
def _pes_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The energy-landscape stage caches what its oracle computed for molecule sets outside the
    package: in a folder of this session, not the user's cache (inherited by servers the tests start).
    """
    os.environ["MDGATE_CACHE_DIR"] = str(tmp_path_factory.mktemp("mdgate-cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (on PYTHONPATH of CLI subprocesses, so that tests.models unpickles)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device every test runs on."""
    return DEVICE


@pytest.fixture(scope="session")
def packaged_molecules() -> list[Molecule]:
    """The packaged validation set (10 molecules)."""
    return read_molecules()


@pytest.fixture(scope="session")
def packaged_reference() -> ReferenceSet:
    """The packaged GFN2-xTB reference set (50 frames per molecule)."""
    return read_reference()


@pytest.fixture(scope="session")
def atomrefs(packaged_reference: ReferenceSet) -> torch.Tensor:
    """Atom reference energies fitted to the packaged reference set (H, C, N, O non-zero)."""
    return fit_atomrefs(packaged_reference.frames)




@pytest.fixture(scope="session")
def untrained_model_path(tmp_path_factory: pytest.TempPathFactory, atomrefs: torch.Tensor) -> Path:
    """An untrained PaiNN (16 features, 2 interactions) with fitted atom references, saved
    like the project's models, with its metadata sidecar.
    """
    path = tmp_path_factory.mktemp("models") / "untrained_painn.pt"
    return save_model(build_painn(16, 2, atomrefs), path, MODEL_META)


@dataclass
class SmallSet:
    """Files of a small validation set: start geometries and matching reference frames."""

    molecules: Path
    reference: Path
    names: tuple[str, ...]


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory, packaged_molecules: list[Molecule],
              packaged_reference: ReferenceSet) -> SmallSet:
    """Ethanol and malonaldehyde, with 20 GFN2-xTB reference frames each."""
    folder = tmp_path_factory.mktemp("small_set")
    mols = [m.atoms for m in packaged_molecules if m.name in SMALL_SET]
    frames: list[Atoms] = []
    for name in SMALL_SET:
        frames += [f for f, n in zip(packaged_reference.frames, packaged_reference.names, strict=True)
                   if n == name][:FRAMES_PER_MOLECULE]
    write(folder / "molecules.extxyz", mols)
    write(folder / "reference.extxyz", frames)
    return SmallSet(folder / "molecules.extxyz", folder / "reference.extxyz", SMALL_SET)


@pytest.fixture(scope="session")
def good_model_path() -> Path:
    """The committed small trained PaiNN (examples/models/painn_small.pt + .json)."""
    if not GOOD_MODEL.is_file() or not GOOD_MODEL.with_suffix(".json").is_file():
        pytest.fail(f"{GOOD_MODEL} (and its .json metadata) must be committed: scripts/train_models.py small")
    return GOOD_MODEL


@pytest.fixture
def write_config(tmp_path: Path):
    """A function writing a gate config YAML file into the test's tmp folder; returns its path."""

    def write(data: dict, name: str = "gate.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
