"""The model process: same numbers as in-process, a sandbox that holds, pickles only when allowed,
and errors from the far side that say what happened.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mdgate.errors import ModelLoadError
from mdgate.md.neighbors import all_pairs
from mdgate.molecules import read_molecules
from mdgate.potentials import load
from mdgate.potentials.describe import resolve
from mdgate.potentials.isolation import Isolation, ModelKind, in_model_process, model_kind
from mdgate.potentials.remote import RemotePotential, namespaces_available
from mdgate.potentials.schnetpack import SchnetpackPotential
from mdgate.potentials.spec import save_state_dict_model
from tests.models import GOOD_MODEL

ALLOW = Isolation(allow_pickles=True)


def batch() -> tuple[torch.Tensor, ...]:
    """Three packaged molecules as one batch, with all pairs."""
    molecules = read_molecules()[:3]
    numbers = torch.cat([torch.as_tensor(m.atoms.numbers) for m in molecules])
    positions = torch.cat([torch.as_tensor(m.atoms.positions) for m in molecules])
    system_idx = torch.cat([torch.full((len(m.atoms),), k, dtype=torch.long) for k, m in enumerate(molecules)])
    i, j = all_pairs(system_idx)
    return numbers, positions, system_idx, 3, i, j


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemotePotential]:
    probe = tmp_path_factory.mktemp("probe")
    with pytest.MonkeyPatch.context() as mp:  # what the gate's process holds: the model process must not
        mp.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
        mp.setenv("MDGATE_WEBHOOK_SECRET", "s3cret")
        potential = load(GOOD_MODEL, "cpu", isolation=ALLOW, probes=[str(probe)])
    assert isinstance(potential, RemotePotential)
    yield potential
    potential.close()


def test_the_model_process_gives_the_in_process_numbers(remote: RemotePotential) -> None:
    local = load(GOOD_MODEL, "cpu")
    args = batch()
    e0, f0 = local(*args)
    e1, f1 = remote(*args)
    assert e1.dtype == torch.float64 and f1.shape == f0.shape
    assert torch.equal(e0, e1) and torch.equal(f0, f1)
    assert remote.n_parameters == local.n_parameters and remote.cutoff_A == local.cutoff_A
    assert remote.own_cutoff_A() == pytest.approx(local.cutoff_A)


def test_the_model_process_holds_no_secrets_and_writes_nowhere_else(remote: RemotePotential) -> None:
    report = remote.sandbox_report
    assert report.secrets == []
    if namespaces_available() is not None:
        pytest.skip(f"no user namespaces here ({namespaces_available()}): environment-only model process")
    assert report.namespaces and not report.network
    assert report.writable == [] and len(report.read_only) == 1
    assert "own namespaces" in remote.sandbox


def test_threads_and_pickled_copies_share_one_model_process(remote: RemotePotential) -> None:
    args = batch()
    expected = remote(*args)[1]
    copy = pickle.loads(pickle.dumps(remote))  # as an MD worker process gets it
    assert copy.socket_path == remote.socket_path
    results: list[torch.Tensor] = []
    threads = [threading.Thread(target=lambda p=p: results.append(p(*args)[1])) for p in (remote, copy, copy)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(torch.equal(r, expected) for r in results)
    copy.close()  # a copy does not own the process
    assert torch.equal(remote(*args)[1], expected)


def test_elements_are_checked_on_the_far_side(remote: RemotePotential) -> None:
    remote.check_elements({1, 6, 8})
    with pytest.raises(Exception, match=r"Z=.*92|U"):
        remote.check_elements({1, 92})


def test_pickles_need_permission_and_weights_load_in_process(tmp_path: Path) -> None:
    assert model_kind(resolve(GOOD_MODEL)) is ModelKind.PICKLE
    with pytest.raises(ModelLoadError, match=r"pickle.*mdgate convert.*MDGATE_ALLOW_PICKLES"):
        load(GOOD_MODEL, "cpu", isolation=Isolation())
    folder = save_state_dict_model(torch.load(GOOD_MODEL, weights_only=False), tmp_path / "w")
    descriptor = resolve(folder)
    assert model_kind(descriptor) is ModelKind.WEIGHTS
    assert not in_model_process(descriptor, Isolation())
    assert in_model_process(descriptor, Isolation(model_process="always"))
    assert isinstance(load(folder, "cpu", isolation=Isolation()), SchnetpackPotential)


def test_allow_pickles_matches_model_name_patterns() -> None:
    assert Isolation.for_model("painn-small", "painn-*,teacher").allow_pickles
    assert Isolation.for_model("teacher", ["painn-*", "teacher"]).allow_pickles
    assert not Isolation.for_model("teacher-2", "painn-*,teacher").allow_pickles
    assert not Isolation.for_model("anything", "").allow_pickles


def test_a_model_that_fails_to_load_is_an_error_with_its_reason(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="not a loadable torch model"):
        load(bad, "cpu", isolation=ALLOW)


def test_an_exception_of_the_model_reaches_the_engine_as_its_own_type(tmp_path: Path) -> None:
    from mdgate.runner import check_potential
    from tests.models import save_model
    from tests.reliability.rel_models import RaisingModel

    path = save_model(RaisingModel(torch.load(GOOD_MODEL, weights_only=False)), tmp_path / "raising.pt")
    potential = load(path, "cpu", isolation=ALLOW)
    try:
        with pytest.raises(RuntimeError, match="shape mismatch"):
            potential(*batch())
        with pytest.raises(Exception, match=r"model failed on \w+ \(RuntimeError: shape mismatch"):
            check_potential(potential, read_molecules())
    finally:
        potential.close()  # type: ignore[attr-defined]
