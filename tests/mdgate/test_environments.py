"""The model's own environment: requirements the engine does not satisfy get a layered virtual
environment, built once; two frameworks whose requirements conflict run side by side.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from mdgate.errors import ModelLoadError
from mdgate.md.neighbors import all_pairs
from mdgate.molecules import read_molecules
from mdgate.potentials import load
from mdgate.potentials.describe import resolve
from mdgate.potentials.environments import env_key, environment, unmet
from mdgate.potentials.isolation import Isolation
from mdgate.potentials.remote import RemotePotential

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_unmet_requirements_are_those_the_engine_lacks() -> None:
    assert unmet([f"torch=={torch.__version__.split('+')[0]}", "numpy>=1"]) == []
    assert unmet(["torch<1", "surely-not-installed-pkg"]) == ["torch<1", "surely-not-installed-pkg"]
    assert unmet(["surely-not-installed-pkg; python_version < '3'"]) == []  # marker: not for this Python
    assert env_key(["a==1", "b==2"]) == env_key(["b==2", "a==1"]) != env_key(["a==1"])


def test_a_build_that_fails_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"No matching distribution found for surely-not-a-package-xyz==9\.9"):
        environment(["surely-not-a-package-xyz==9.9"], log=lambda line: None, root=tmp_path)
    assert not any((p / "ready").exists() for p in tmp_path.iterdir() if p.is_dir())


def e3nn_version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import e3nn; print(e3nn.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_mace_and_sevennet_run_side_by_side_in_their_own_environments() -> None:
    """MACE pins e3nn==0.4.4, sevenn needs e3nn>=0.5: one environment cannot hold both. Each
    descriptor's model process runs in its own environment (built, or found built), and both
    evaluate the same molecule.
    """
    molecule = read_molecules()[0]
    numbers = torch.as_tensor(molecule.atoms.numbers)
    positions = torch.as_tensor(molecule.atoms.positions)
    system_idx = torch.zeros(len(numbers), dtype=torch.long)
    i, j = all_pairs(system_idx)
    versions = {}
    for example in ("mace", "sevennet0"):
        requirements = resolve(EXAMPLES / example).requirements
        assert unmet(requirements), f"{example}'s requirements are already in the engine's environment"
        python, _ = environment(requirements, log=lambda line: None)
        versions[example] = e3nn_version(python)
        potential = load(EXAMPLES / example, "cpu", isolation=Isolation())
        try:
            assert isinstance(potential, RemotePotential) and potential.isolation.python == str(python)
            energy, forces = potential(numbers, positions, system_idx, 1, i, j)
            assert torch.isfinite(energy).all() and torch.isfinite(forces).all()
            assert forces.shape == (len(numbers), 3) and 0 < float(forces.abs().max()) < 20
        finally:
            potential.close()
    assert versions["mace"] == "0.4.4" and versions["sevennet0"] >= "0.5", versions
