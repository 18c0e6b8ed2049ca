"""The registry adapter against a real ``mlflow server`` (SQLite, proxied artifacts)."""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mdgate.config import GateConfig
from mdgate.errors import MetadataError, ModelLoadError, MoleculeSetError
from mdgate.potentials.schnetpack import load_module
from mdgate.report.markdown import write_report
from mdgate.results import ModelInfo, Timing, ValidationResult, Verdict
from mdgate.runner import assemble, error_result
from registry import LeaseLostError, Registry, Status, TransientRegistryError, VersionNotFoundError
from registry import types as T
from registry.artifacts import fetch_candidate, registered_metadata
from registry.claims import take_lock
from registry.register import register_potential
from tests.integration import ModelFile
from tests.models import build_painn

pytestmark = pytest.mark.integration


def unique(prefix: str = "reg") -> str:
    """A registered model name no other test uses (the served gate ignores ``reg-*``)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def plain_version(registry: Registry, name: str, files: dict[str, bytes] | None = None,
                  path: str = "model") -> str:
    """A version registered with plain MLflow from a run holding ``files`` under ``path``."""
    client = registry.client
    run = client.create_run("0")
    for fname, data in (files or {}).items():
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / fname).write_bytes(data)
            client.log_artifact(run.info.run_id, str(Path(tmp) / fname), path)
    client.set_terminated(run.info.run_id)
    with contextlib.suppress(MlflowException):  # already registered
        client.create_registered_model(name)
    source = f"runs:/{run.info.run_id}/{path}"
    return client.create_model_version(name, source, run_id=run.info.run_id).version


def approved_result(source: str = "test") -> ValidationResult:
    """An Approved result without MD (no molecules): enough to exercise publishing."""
    return assemble(ModelInfo(source=source), GateConfig(), [], None, Timing())


def test_register_writes_metadata_and_pending(registry: Registry, bad_model: ModelFile,
                                              tmp_path: Path) -> None:
    parent = unique()
    pv = register_potential(registry, bad_model.path, parent, meta=bad_model.meta)
    name = unique()
    v = register_potential(registry, bad_model.path, name, parent=f"{parent}/{pv.version}",
                           meta={"level_of_theory": "GFN2-xTB"}, description="a student")
    assert v.status == Status.PENDING
    assert set(v.tags) == {T.STATUS, T.UPDATED_AT}  # the metadata are the registration run's params
    md = registered_metadata(registry, v)
    assert md[T.CUTOFF_A] == "5"  # read from the model's cutoff function
    assert md[T.ENERGY_UNIT] == "eV" and md[T.POSITION_UNIT] == "Angstrom"
    assert md[T.FORCES_KEY] == "forces" and md[T.PARENT] == f"{parent}/{pv.version}"
    assert md[T.PARENT_N_PARAMETERS] == md[T.N_PARAMETERS]
    candidate = fetch_candidate(registry, name, v.version, tmp_path)
    assert candidate.model_path.name == "model.pth"  # the mlflow.pytorch flavor
    assert isinstance(load_module(candidate.model_path), torch.nn.Module)
    assert candidate.meta.cutoff_A == 5.0 and candidate.meta.level_of_theory == "GFN2-xTB"
    assert candidate.meta.parent_n_parameters == int(md[T.N_PARAMETERS])
    assert registry.get_version(name, v.version).description == "a student"


@pytest.mark.parametrize("case", ["unit", "no_forces", "no_cutoff", "parent", "not_a_model"])
def test_register_refuses_what_cannot_be_known(registry: Registry, bad_model: ModelFile, tmp_path: Path,
                                               case: str) -> None:
    path, meta, parent = bad_model.path, {}, None
    if case == "unit":
        meta = {"energy_unit": "furlong"}
    elif case == "no_forces":
        path = tmp_path / "energy_only.pt"
        torch.save(build_painn(8, 1, forces=False), path)
    elif case == "no_cutoff":
        path = tmp_path / "linear.pt"
        torch.save(torch.nn.Linear(3, 1), path)
    elif case == "parent":
        parent = f"{unique()}/1"
    else:
        path = tmp_path / "junk.pt"
        path.write_bytes(b"not a model")
    name = unique()
    error = ModelLoadError if case == "not_a_model" else MetadataError
    with pytest.raises(error) as err:
        register_potential(registry, path, name, parent=parent, meta=meta)
    assert "\n" not in str(err.value)
    with pytest.raises(VersionNotFoundError):
        registry.list_versions(name)


def test_claim_is_race_safe(registry: Registry, bad_model: ModelFile) -> None:
    name = unique()
    version = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
    outcomes = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        outcomes.append(registry.claim(name, version, lease_s=60, flow_run=f"run-{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claims = [o.claim for o in outcomes if o.claim is not None]
    assert len(claims) == 1 and claims[0].generation == 1
    info = registry.get_version(name, version)
    assert info.status == Status.RUNNING and info.claim == 1 and info.lease_expires_at is not None
    # a live lease is not taken over, even with force; the run it was claimed for adopts it
    assert registry.claim(name, version, lease_s=60, flow_run="other", force=True).claim is None
    adopted = registry.claim(name, version, lease_s=60, flow_run=info.flow_run).claim
    assert adopted is not None and adopted.generation == 1


def test_a_run_adopts_the_claim_its_trigger_is_still_writing(registry: Registry, bad_model: ModelFile) -> None:
    """A gate run that starts within a second of its trigger may ask for its claim while the
    trigger has taken the lock and not yet written it: the run waits and adopts it (before, it
    ended Skipped and left the version Running for a run that had ended).
    """
    name = unique()
    version = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
    assert take_lock(registry.conn, name, version, 1)  # the trigger, mid-claim

    def trigger_writes() -> None:
        time.sleep(1.0)
        registry.set_tags(name, version, {"mdgate.lease_expires_at": "2999-01-01T00:00:00+00:00",
                                          "mdgate.status": Status.RUNNING.value, "mdgate.claim": "1",
                                          "mdgate.flow_run": "run-a"})

    writer = threading.Thread(target=trigger_writes)
    writer.start()
    outcome = registry.claim(name, version, lease_s=60, flow_run="run-a")
    writer.join()
    assert outcome.claim is not None and outcome.claim.generation == 1, outcome.reason
    # another run is still refused
    assert registry.claim(name, version, lease_s=60, flow_run="run-b").claim is None
    # a trigger that finds its run already holding the claim writes nothing: the run may have
    # published its verdict in the meantime
    tags = registry.get_version(name, version).tags
    assert registry.claim(name, version, lease_s=60, flow_run="run-a", queued=True).claim is not None
    assert registry.get_version(name, version).tags == tags


def test_a_run_adopts_its_claim_when_it_reads_between_the_triggers_writes(registry: Registry,
                                                                          bad_model: ModelFile) -> None:
    """The run reads the version after its trigger wrote the status (Running, a live lease) and
    before the claim number and flow run: it waits for them and adopts the claim (before, it
    ended Skipped as "already Running (flow run None)" and the version waited an hour for its
    lease to expire).
    """
    name = unique()
    version = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
    assert take_lock(registry.conn, name, version, 1)  # the trigger, mid-claim
    registry.set_tags(name, version, {"mdgate.lease_expires_at": "2999-01-01T00:00:00+00:00",
                                      "mdgate.status": Status.RUNNING.value})

    def trigger_writes() -> None:
        time.sleep(1.5)
        registry.set_tags(name, version, {"mdgate.claim": "1"})
        time.sleep(1.5)
        registry.set_tags(name, version, {"mdgate.flow_run": "run-a"})

    writer = threading.Thread(target=trigger_writes)
    writer.start()
    outcome = registry.claim(name, version, lease_s=60, flow_run="run-a")
    writer.join()
    assert outcome.claim is not None and outcome.claim.generation == 1, outcome.reason
    refused = registry.claim(name, version, lease_s=60, flow_run="run-b")
    assert refused.claim is None and "already Running (flow run run-a" in refused.reason


def test_versions_to_gate(registry: Registry, bad_model: ModelFile, tmp_path: Path) -> None:
    name = unique()
    data = {"model.pt": bad_model.path.read_bytes()}
    fresh, pending, expired, live, done = (plain_version(registry, name, data) for _ in range(5))
    registry.set_tags(name, pending, {T.STATUS: "Pending"})
    registry.claim(name, expired, lease_s=0.5)
    live_claim = registry.claim(name, live, lease_s=600).claim
    done_claim = registry.claim(name, done, lease_s=600).claim
    result = approved_result()
    write_report(result, tmp_path)
    registry.publish(done_claim, result, tmp_path, "sha")
    time.sleep(1.0)
    due = {v.version for v in registry.versions_to_gate(lease_s=600) if v.name == name}
    assert due == {fresh, pending, expired}
    assert live_claim is not None
    # the expired lease is claimed again as generation 2; the live one is not
    assert registry.claim(name, expired, lease_s=600).claim.generation == 2
    assert registry.claim(name, live, lease_s=600).claim is None


def test_publish_stores_report_then_status_and_moves_alias(registry: Registry, bad_model: ModelFile,
                                                           tmp_path: Path) -> None:
    name = unique()
    data = {"model.pt": bad_model.path.read_bytes()}
    v1, v2, v3 = (plain_version(registry, name, data) for _ in range(3))
    client = MlflowClient(registry.tracking_uri)
    client.update_model_version(name, v1, description="Author's notes.")
    approved = approved_result()
    write_report(approved, tmp_path / "a")
    for v in (v1, v2):
        claim = registry.claim(name, v, lease_s=600, flow_run="fr").claim
        pub = registry.publish(claim, approved, tmp_path / "a", "sha-a")
        assert pub.status == Status.APPROVED
    assert pub.alias_version == v2 and registry.alias_version(name) == v2
    info = registry.get_version(name, v1)
    assert info.status == Status.APPROVED and info.criteria_sha256 == "sha-a" and info.flow_run == "fr"
    assert info.description.startswith("Author's notes.") and "mdgate verdict: Approved" in info.description
    assert T.LEASE_EXPIRES_AT not in info.tags
    # the report is stored in the validation run before the status
    run = client.get_run(info.validation_run)
    assert run.info.experiment_id == client.get_experiment_by_name("mdgate").experiment_id
    stored = {a.path for a in client.list_artifacts(info.validation_run)}
    assert stored >= {"report.md", "report.html", "results.json"}
    local = client.download_artifacts(info.validation_run, "results.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["verdict"] == "Approved"
    assert info.report.endswith("/report.md")
    # a Rejected/Error verdict does not take the alias; re-gating v2 as Error moves it back to v1
    rejected = error_result("model file is empty", "x", GateConfig())
    write_report(rejected, tmp_path / "e")
    registry.publish(registry.claim(name, v3, lease_s=600).claim, rejected, tmp_path / "e", "sha")
    assert registry.alias_version(name) == v2
    regate = registry.claim(name, v2, lease_s=600, force=True).claim
    assert regate.generation == 2
    registry.publish(regate, rejected, tmp_path / "e", "sha")
    assert registry.alias_version(name) == v1
    assert registry.get_version(name, v2).reason == "model file is empty"
    assert registry.get_version(name, v2).description.count(T.DESCRIPTION_MARKER) == 1
    # a gate whose version was claimed again since cannot publish
    stale = registry.claim(name, v3, lease_s=0.05, force=True).claim
    time.sleep(0.3)
    assert registry.claim(name, v3, lease_s=600).claim.generation == stale.generation + 1
    with pytest.raises(LeaseLostError):
        registry.publish(stale, approved, tmp_path / "a", "sha")


class RecordingRegistry(Registry):
    """A registry that records every tag write it is asked for, as the scale-out and fault tests
    replace :meth:`Registry.set_tags` to pause or crash a gate between writes.
    """

    def __init__(self, tracking_uri: str):
        super().__init__(tracking_uri)
        self.writes: list[dict[str, str]] = []

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Record the write, then do it."""
        self.writes.append(dict(tags))
        super().set_tags(name, version, tags)


def test_claims_publications_and_reviews_write_tags_through_set_tags(registry: Registry, bad_model: ModelFile,
                                                                     tmp_path: Path) -> None:
    name = unique()
    version = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
    recording = RecordingRegistry(registry.tracking_uri)
    claim = recording.claim(name, version, lease_s=600, flow_run="fr").claim
    assert claim is not None
    claim = recording.renew(claim)
    result = approved_result()
    write_report(result, tmp_path)
    recording.publish(claim, result, tmp_path, "sha")
    recording.review(name, version, approve=False, reason="looks wrong", by="ana")
    statuses = [w[T.STATUS] for w in recording.writes if T.STATUS in w]
    assert statuses == ["Running", "Approved", "Rejected"]
    # the claim's tags in one write, in the order readers rely on (claims.py); the status alone, last
    assert list(recording.writes[0])[-3:] == [T.STATUS, T.CLAIM, T.FLOW_RUN]
    assert list(recording.writes[1]) == [T.LEASE_EXPIRES_AT]  # the renewal
    assert [w for w in recording.writes if T.STATUS in w][1] == {T.STATUS: "Approved"}
    assert registry.get_version(name, version).status == Status.REJECTED


def test_fetch_missing_corrupt_and_plain_artifacts(registry: Registry, bad_model: ModelFile,
                                                   tmp_path: Path) -> None:
    name = unique()
    missing = plain_version(registry, name, {}, path="nothing")
    with pytest.raises(ModelLoadError, match="missing"):
        fetch_candidate(registry, name, missing, tmp_path / "m")
    corrupt = plain_version(registry, name, {"best_model": b"\x80\x04 not a pickle"})
    candidate = fetch_candidate(registry, name, corrupt, tmp_path / "c")
    with pytest.raises(ModelLoadError, match="not a loadable torch model"):
        load_module(candidate.model_path)
    plain = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
    candidate = fetch_candidate(registry, name, plain, tmp_path / "p")
    assert candidate.model_path.name == "model.pt" and candidate.meta.energy_unit == "eV"
    registry.set_tags(name, plain, {T.CUTOFF_A: "-1"})
    with pytest.raises(MetadataError, match=T.CUTOFF_A):
        fetch_candidate(registry, name, plain, tmp_path / "q")


def test_plain_mlflow_pytorch_model(registry: Registry, bad_model: ModelFile, tmp_path: Path) -> None:
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(registry.tracking_uri)
    name = unique()
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.load(bad_model.path, weights_only=False), name="model",
                                        serialization_format="pickle")
    mv = mlflow.register_model(info.model_uri, name)
    candidate = fetch_candidate(registry, name, mv.version, tmp_path)
    assert candidate.model_path.name == "model.pth"
    assert isinstance(load_module(candidate.model_path), torch.nn.Module)


def test_model_names_its_own_sets(registry: Registry, bad_model: ModelFile, small_set: Any,
                                  tmp_path: Path) -> None:
    name = unique()
    version = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
    client = registry.client
    run = client.create_run("0")
    client.log_artifact(run.info.run_id, str(small_set.reference), "sets")
    client.set_registered_model_tag(name, T.MOLECULES, str(small_set.molecules))
    client.set_registered_model_tag(name, T.REFERENCE, f"runs:/{run.info.run_id}/sets/reference.extxyz")
    candidate = fetch_candidate(registry, name, version, tmp_path)
    assert candidate.molecules == small_set.molecules
    assert candidate.reference.read_bytes() == small_set.reference.read_bytes()
    client.set_registered_model_tag(name, T.MOLECULES, "/nonexistent/set.extxyz")
    with pytest.raises(MoleculeSetError):
        fetch_candidate(registry, name, version, tmp_path / "x")


def test_unreachable_server_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.servers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    dead = Registry(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientRegistryError):
        dead.get_version("m", "1")


def test_verdict_enum_matches_status() -> None:
    assert {v.value for v in Verdict} <= {s.value for s in Status}
