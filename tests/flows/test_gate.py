"""The gate end to end: real MLflow and Prefect servers, ``mdgate serve`` as a subprocess.

Registering a version fires MLflow's webhook at the receiver, which starts the gate deployment;
the served runner runs the flow; the verdict lands in MLflow. Timings measured here are kept in
out/integration_timings.json.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from flows.cli import app
from flows.settings import SWEEP_FLOW, load_settings
from flows.webhook import sign
from mdgate.config import load_config
from registry import Registry, Status, figures
from registry import types as T
from registry.register import register_potential
from tests.integration import (
    GATED_PREFIX,
    WEBHOOK_SECRET,
    ModelFile,
    Served,
    Stack,
    final_flow_runs,
    flow_runs_named,
    record_timing,
    wait_for_status,
    wait_for_statuses,
)
from tests.models import build_painn

pytestmark = pytest.mark.integration
VERDICT_STATES = {"Approved", "Rejected", "Error"}
#: How long MLflow waits for the receiver's answer to a delivery (``MLFLOW_WEBHOOK_REQUEST_TIMEOUT``):
#: a trigger creates a Prefect run and claims the version, seconds on a loaded two-core machine.
WEBHOOK_TIMEOUT_S = 30.0


@dataclass
class Gated:
    """A registered model with a good version (1) and a bad version (2), both gated."""

    name: str
    good: Any
    bad: Any


def plain_version(registry: Registry, name: str, files: dict[str, bytes], path: str = "model") -> str:
    """Register a version with plain MLflow (no mdgate metadata) from a run holding ``files``."""
    import tempfile

    client = registry.client
    run = client.create_run("0")
    with tempfile.TemporaryDirectory() as tmp:
        for fname, data in files.items():
            (Path(tmp) / fname).write_bytes(data)
            client.log_artifact(run.info.run_id, str(Path(tmp) / fname), path)
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except Exception:  # already registered
        pass
    source = f"runs:/{run.info.run_id}/{path}"
    return client.create_model_version(name, source, run_id=run.info.run_id).version


class paused_webhook:
    """Disable the ``mdgate`` MLflow webhook (nothing listens), re-enable on exit."""

    def __init__(self, registry: Registry):
        self.registry = registry
        hooks = [h for h in registry.client.list_webhooks() if h.name == "mdgate"]
        assert hooks, "mdgate serve should have created the MLflow webhook"
        self.webhook_id = hooks[0].webhook_id

    def __enter__(self) -> paused_webhook:
        self.registry.set_webhook_active(self.webhook_id, False)
        time.sleep(1.5)  # the server caches subscriptions for 1 s in these tests
        return self

    def __exit__(self, *exc: object) -> None:
        self.registry.set_webhook_active(self.webhook_id, True)
        time.sleep(1.5)


def prefect_client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def test_md_tasks_tag_only_where_a_limit_bounds_them(stack: Stack) -> None:
    """A tag takes a slot (two database writes) per task: only worth it where a limit exists."""
    from flows.measure import md_tags

    tag = f"mdgate-gpu-{uuid.uuid4().hex[:6]}"
    settings = load_settings().model_copy(update={"gpu_tag": tag})
    assert md_tags(settings) == []
    with prefect_client() as pc:
        pc.create_concurrency_limit(tag, 1)
        try:
            assert md_tags(settings) == [tag]
        finally:
            pc.delete_concurrency_limit_by_tag(tag)


@pytest.fixture(scope="module")
def gated(served: Served, registry: Registry, good_model: ModelFile, bad_model: ModelFile) -> Gated:
    """Register a good and a bad version with ``register_potential``; the webhook gates both."""
    name = f"{GATED_PREFIX}painn-{uuid.uuid4().hex[:6]}"
    good = register_potential(registry, good_model.path, name, meta=good_model.meta)
    _, seen_good = wait_for_status(registry, name, good.version, final=False)
    bad = register_potential(registry, bad_model.path, name, parent=f"{name}/{good.version}",
                             meta=bad_model.meta)
    _, seen_bad = wait_for_status(registry, name, bad.version, final=False)
    for seen in (seen_good, seen_bad):
        assert "Running" in seen, f"Running never observed: {seen}\n{served.log_tail()}"
        record_timing("webhook_registration_to_running_s", seen["Running"])
    done = wait_for_statuses(registry, name, dict.fromkeys((good.version, bad.version), time.monotonic()))
    info_good, info_bad = done[good.version][0], done[bad.version][0]
    return Gated(name, info_good, info_bad)


def test_webhook_gates_good_and_bad(gated: Gated, registry: Registry, stack: Stack, tmp_path: Path) -> None:
    assert gated.good.status == Status.APPROVED, gated.good.reason
    assert gated.bad.status == Status.REJECTED, gated.bad.reason
    assert "min_force_r2" in gated.bad.reason and "\n" not in gated.bad.reason
    assert registry.alias_version(gated.name) == gated.good.version  # newest Approved, not newest
    sha = load_config(stack.config).sha256()
    for info in (gated.good, gated.bad):
        assert info.criteria_sha256 == sha and info.flow_run and info.validation_run
        assert info.claim == 1
        # The status is written before the lease is released: the lease tag goes right after.
        deadline = time.monotonic() + 30
        while T.LEASE_EXPIRES_AT in registry.get_version(info.name, info.version).tags:
            assert time.monotonic() < deadline, "the lease was not released after the verdict"
            time.sleep(0.5)
    assert f"mdgate verdict: {gated.good.status.value}" in gated.good.description
    assert "| Molecule |" in gated.good.description and "[Validation run](" in gated.good.description
    # the validation run: report artifacts and per-molecule metrics
    client = registry.client
    run = client.get_run(gated.good.validation_run)
    assert run.data.metrics["ethanol/max_energy_deviation_meV_per_atom"] >= 0
    assert run.data.metrics["accuracy/force_r2"] >= 0.9
    assert run.data.params["md.n_steps"] == "60"
    report = Path(client.download_artifacts(run.info.run_id, "report.md", str(tmp_path)))
    assert gated.good.report.endswith("/report.md")
    tokens = MarkdownIt("commonmark").enable("table").parse(report.read_text())
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert "STATUS: APPROVED FOR MD" in headings and "Conclusion" in headings
    assert any(t.type == "table_open" for t in tokens)
    results_path = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path))
    results = json.loads(Path(results_path).read_text())
    assert results["verdict"] == "Approved"
    assert [m["name"] for m in results["molecules"]] == ["ethanol", "malonaldehyde"]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{kind}_{m}.png" for kind in ("energy", "stress", "pes")
                     for m in ("ethanol", "malonaldehyde")}
    # the Prefect side: one flow run per version, named after it, final state named after the verdict
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    for info in (gated.good, gated.bad):
        runs = final_flow_runs(f"gate/{gated.name}/v{info.version}")
        assert [r.state.name for r in runs] == [info.status.value]
        assert str(runs[0].id) == info.flow_run
    [flow_run] = flow_runs_named(f"gate/{gated.name}/v{gated.good.version}")
    with prefect_client() as pc:
        tasks = pc.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        artifacts = pc.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run.id])))
    md_tasks = {t.name: t for t in tasks if t.name.startswith("md-")}
    assert set(md_tasks) == {"md-ethanol", "md-malonaldehyde"}
    # the stack asks for a limit (MDGATE_GPU_LIMIT=2): the MD tasks carry its tag
    assert all(t.tags == ["mdgate-gpu"] and t.state.is_completed() for t in md_tasks.values())
    steps = {t.name.split("-")[0] for t in tasks}
    assert steps >= {"claim", "fetch", "load", "sanity", "accuracy", "oracle", "verdict", "report", "publish"}
    kinds = {a.type: a for a in artifacts}
    assert set(kinds) == {"markdown", "table", "progress"}
    assert kinds["markdown"].key.endswith("-report") and "APPROVED FOR MD" in kinds["markdown"].data
    assert kinds["progress"].data == 100.0
    table = json.loads(kinds["table"].data)
    assert [row["Molecule"] for row in table] == ["ethanol", "malonaldehyde"]
    # time of a gate outside the MD itself
    duration = (flow_run.end_time - flow_run.start_time).total_seconds()
    record_timing("gate_flow_run_s", duration)
    record_timing("gate_flow_run_outside_md_s", duration - results["timing"]["md_s"])
    record_timing("gate_md_s", results["timing"]["md_s"])


def test_bad_artifacts_end_as_error_and_leave_other_versions(gated: Gated, registry: Registry,
                                                             bad_model: ModelFile, tmp_path: Path) -> None:
    before = {v.version: v for v in registry.list_versions(gated.name)}
    energy_only = tmp_path / "energy_only.pt"
    torch.save(build_painn(8, 1, forces=False), energy_only)
    cases = {
        "missing": plain_version(registry, gated.name, {}, path="nothing"),
        "corrupt": plain_version(registry, gated.name, {"best_model": b"\x80\x04garbage"}),
        "no forces": plain_version(registry, gated.name, {"model.pt": energy_only.read_bytes()}),
    }
    expected = {"missing": "missing", "corrupt": "not a loadable torch model",
                "no forces": "no forces output"}
    done = wait_for_statuses(registry, gated.name, dict.fromkeys(cases.values(), time.monotonic()))
    for case, version in cases.items():
        info, _ = done[version]
        assert info.status == Status.ERROR, (case, info.reason)
        assert expected[case] in info.reason and "\n" not in info.reason
        assert info.report and info.validation_run  # an Error still has its report
        [run] = final_flow_runs(f"gate/{gated.name}/v{version}")
        assert run.state.name == "Error" and run.state.is_failed()
    after = {v.version: v for v in registry.list_versions(gated.name)}
    for version, info in before.items():
        assert after[version].tags == info.tags and after[version].description == info.description
    assert registry.alias_version(gated.name) == gated.good.version


def test_webhook_rejects_forged_and_gates_once(served: Served, registry: Registry,
                                               bad_model: ModelFile) -> None:
    name = f"{GATED_PREFIX}hook-{uuid.uuid4().hex[:6]}"
    with paused_webhook(registry):
        version = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
    body = json.dumps({"entity": "model_version", "action": "created", "timestamp": "now",
                       "data": {"name": name, "version": version, "source": "", "run_id": None, "tags": {},
                                "description": None}}).encode()

    def signed(delivery: str, secret: str = WEBHOOK_SECRET, at: float | None = None) -> dict[str, str]:
        ts = str(int(at if at is not None else time.time()))
        return {"X-MLflow-Signature": sign(secret, delivery, ts, body), "X-MLflow-Timestamp": ts,
                "X-MLflow-Delivery-Id": delivery, "Content-Type": "application/json"}

    forged = signed("d-forged", secret="not-the-secret")
    missing = {k: v for k, v in signed("d-missing").items() if k != "X-MLflow-Signature"}
    stale = signed("d-stale", at=time.time() - 3600)
    for headers, status in ((forged, 403), (missing, 401), (stale, 403)):
        answer = httpx.post(served.webhook_url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_S)
        assert answer.status_code == status
    time.sleep(3)
    assert flow_runs_named(f"gate/{name}/v{version}") == []
    assert registry.get_version(name, version).status is None
    # the same event delivered twice (MLflow retry: same delivery id; a second webhook: new id)
    first = httpx.post(served.webhook_url, content=body, headers=signed("d-1"), timeout=WEBHOOK_TIMEOUT_S)
    retry = httpx.post(served.webhook_url, content=body, headers=signed("d-1"), timeout=WEBHOOK_TIMEOUT_S)
    other = httpx.post(served.webhook_url, content=body, headers=signed("d-2"), timeout=WEBHOOK_TIMEOUT_S)
    assert first.status_code == 202 and retry.json()["status"] == "duplicate"
    assert other.status_code == 202 and other.json()["flow_run"] == first.json()["flow_run"]
    info, _ = wait_for_status(registry, name, version)
    assert info.status == Status.REJECTED and info.claim == 1
    assert len(flow_runs_named(f"gate/{name}/v{version}")) == 1


def test_sweep_gates_missed_versions_and_expired_leases_once(served: Served, registry: Registry,
                                                             bad_model: ModelFile) -> None:
    from prefect.deployments import run_deployment

    settings = load_settings()
    name = f"{GATED_PREFIX}sweep-{uuid.uuid4().hex[:6]}"
    with paused_webhook(registry):
        missed = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
        t_registered = time.monotonic()
        crashed = plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
        # a gate that claimed the version and died: Running with a lease that runs out
        assert registry.claim(name, crashed, lease_s=1.0, flow_run="dead").claim.generation == 1
        time.sleep(1.5)
        assert {v.version for v in registry.versions_to_gate(settings.lease_s) if v.name == name} == {
            missed, crashed}
        # two sweeps at once: each version is still gated exactly once
        t_sweep = time.monotonic()
        sweeps = []

        def sweep() -> None:
            sweeps.append(run_deployment(f"{SWEEP_FLOW}/mdgate", timeout=0, as_subflow=False))

        # each thread runs in a copy of this context: the Prefect settings of the session
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(sweep,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _, seen = wait_for_status(registry, name, missed, final=False, since=t_sweep)
    record_timing("sweep_trigger_to_running_s", seen["Running"])
    record_timing("sweep_registration_to_running_s", seen["Running"] + (t_sweep - t_registered))
    for version in (missed, crashed):
        info, _ = wait_for_status(registry, name, version)
        assert info.status == Status.REJECTED, info.reason
        runs = final_flow_runs(f"gate/{name}/v{version}")
        assert [r.state.name for r in runs] == ["Rejected"], [r.state.name for r in runs]
    assert registry.get_version(name, crashed).claim == 2
    assert registry.get_version(name, missed).claim == 1
    with prefect_client() as pc:
        for sweep in sweeps:
            assert pc.read_flow_run(sweep.id).state.is_completed()


def test_cli_gate_force_status_and_register_errors(gated: Gated, registry: Registry, stack: Stack,
                                                   tmp_path: Path) -> None:
    runner = CliRunner()
    # an Approved version is not gated again without --force
    r = runner.invoke(app, ["gate", gated.name, gated.good.version])
    assert r.exit_code == 0 and "Skipped" in r.output, r.output
    r = runner.invoke(app, ["gate", gated.name, gated.bad.version, "--force"])
    assert r.exit_code == 1, r.output
    info = registry.get_version(gated.name, gated.bad.version)
    assert info.status == Status.REJECTED and info.claim == 2
    r = runner.invoke(app, ["status", gated.name, "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["version"]: row for row in json.loads(r.output)}
    good = rows[gated.good.version]
    assert good["status"] == "Approved" and "approved" in good["aliases"]
    assert rows[gated.good.version]["criteria"] == "current"
    other = tmp_path / "stricter.yaml"
    other.write_text(stack.config.read_text().replace("0.9", "0.99"))
    r = runner.invoke(app, ["status", gated.name, "--config", str(other)])
    assert r.exit_code == 0 and "OTHER" in r.output
    r = runner.invoke(app, ["status", f"{GATED_PREFIX}no-such-model"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["register", str(gated_model_file(tmp_path)), "--name", "cli-x", "--meta",
                            "energy_unit=furlong"])
    assert r.exit_code == 2 and "furlong" in r.output


def gated_model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.pt"
    torch.save(build_painn(8, 1), path)
    return path


def peak_overlap(spans: list[tuple[Any, Any]]) -> int:
    """The largest number of ``(start, end)`` spans that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    peak = now = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


def test_peak_overlap() -> None:
    assert peak_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert peak_overlap([(0, 1), (1, 2)]) == 1  # one ends as the next starts
    assert peak_overlap([(0, 5), (1, 4), (2, 3)]) == 3


def test_serve_runs_at_most_max_gates_at_once(served: Served, registry: Registry, stack: Stack,
                                              bad_model: ModelFile) -> None:
    # A burst of three versions on a serve of MDGATE_MAX_GATES=2: two gates side by side, never
    # three (the sweep's runs do not lend the gates a place).
    max_gates = int(stack.env["MDGATE_MAX_GATES"])
    name = f"{GATED_PREFIX}burst-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    versions = [plain_version(registry, name, {"model.pt": bad_model.path.read_bytes()})
                for _ in range(max_gates + 1)]
    done = wait_for_statuses(registry, name, dict.fromkeys(versions, t0))
    assert all(done[v][0].status == Status.REJECTED for v in versions), [done[v][0].reason for v in versions]
    from prefect.client.orchestration import get_client  # after the stack has set PREFECT_API_URL

    spans, states = [], []
    for v in versions:
        [run] = final_flow_runs(f"gate/{name}/v{v}")
        spans.append((run.start_time, run.end_time))
        with get_client(sync_client=True) as client:
            states.append([st.name for st in client.read_flow_run_states(run.id)])
    assert peak_overlap(spans) == max_gates, spans
    # Waiting for its place, a gate run is Queued (never Late, which a person reads as a fault).
    assert all(history[0] == "Queued" and "Late" not in history for history in states), states


def test_a_descriptor_logged_with_the_flavor_is_gated_through_the_webhook(served: Served, registry: Registry,
                                                                         tmp_path: Path) -> None:
    """Any MLIP: a model registered with plain MLflow as a descriptor (mdgate's flavor) is gated
    like any other version, and ends with a verdict, not an Error. ASE's EMT stands in for a
    third-party calculator (the issue's minimal descriptor: no cutoff, no elements).
    """
    import mlflow

    from registry import flavor

    folder = tmp_path / "emt"
    folder.mkdir()
    (folder / "mdgate.yaml").write_text(
        "framework: ase\nloader: ase.calculators.emt:EMT\nkwargs: {}\nenergy_unit: eV\nlength_unit: Angstrom\n"
        "level_of_theory: EMT\n")
    mlflow.set_tracking_uri(registry.tracking_uri)
    name = f"{GATED_PREFIX}flavor-{uuid.uuid4().hex[:6]}"
    version = str(flavor.log_model(folder, registered_model_name=name).registered_model_version)
    info, _ = wait_for_status(registry, name, version)
    assert info.status in (Status.APPROVED, Status.REJECTED), info.reason
    assert info.report  # the report is stored with the verdict
    # the verdict's logged model says what was judged: the descriptor's level of theory
    [judged] = figures.search_figures(registry.conn, f"tags.`mdgate.model` = '{name}'")
    assert judged.params["level_of_theory"] == "EMT" and judged.tags["mdgate.verdict"] == info.status.value


MACE_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mace"


def environment_task_s(name: str, version: str) -> tuple[float, list[str]]:
    """Seconds of the gate's ``environment`` task for this version, and the task's state names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    runs = flow_runs_named(f"gate/{name}/v{version}")
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])),
                                      task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="environment-")))
    assert tasks, f"no environment task in the gate of {name} v{version}"
    return sum(t.total_run_time.total_seconds() for t in tasks), [t.state_name for t in tasks]


@pytest.mark.slow
def test_a_mace_model_is_gated_in_its_own_environment(served: Served, registry: Registry, tmp_path: Path) -> None:
    """MACE (``mace-torch`` pins ``e3nn==0.4.4``, not in the gate's environment) registered with the
    flavor: the gate builds an environment from the descriptor's requirements (a task of its own),
    runs the model in the model process there, and reaches a verdict; the second version's gate
    finds the environment built.
    """
    import mlflow

    from registry import flavor
    from registry.artifacts import stored_result

    mlflow.set_tracking_uri(registry.tracking_uri)
    name = f"{GATED_PREFIX}mace-{uuid.uuid4().hex[:6]}"
    seconds = []
    for _ in range(2):
        version = str(flavor.log_model(MACE_EXAMPLE, registered_model_name=name).registered_model_version)
        info, _ = wait_for_status(registry, name, version, timeout_s=900)
        assert info.status in (Status.APPROVED, Status.REJECTED), info.reason
        result = stored_result(registry, registry.get_version(name, version), tmp_path / version)
        assert result is not None and result.model.runs_in and result.model.runs_in.startswith("model process")
        env_s, states = environment_task_s(name, version)
        assert states == ["Completed"], states
        seconds.append(env_s)
    record_timing("mace_environment_first_gate_s", seconds[0])
    record_timing("mace_environment_second_gate_s", seconds[1])
    assert seconds[1] < seconds[0], seconds
