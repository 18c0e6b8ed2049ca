"""Starting a gate for a version, shared by the webhook receiver and the registry sweep, and the
sweep flow.

A trigger only creates a run of the gate deployment and claims the version for it
(:func:`start_gate_for_version`). Runs for the same version and claim generation share an
idempotency key, so Prefect keeps one run however many triggers arrive (and a retried start
finds the run it created); the claim inside the flow is the final guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed, Scheduled

from flows.settings import SWEEP_FLOW, Settings, load_settings
from flows.tasks import REGISTRY_TASK, registry_for
from mdgate.config import load_config
from registry.types import VersionInfo


def gate_key(name: str, version: str, generation: int, criteria_sha256: str) -> str:
    """Idempotency key of the gate run for the next claim of a version under these criteria."""
    return f"mdgate/{name}/v{version}/claim{generation + 1}/{criteria_sha256[:12]}"


#: The state of a gate run waiting for its slot: Scheduled by type (the runner picks up every
#: scheduled run) under its own name, because Prefect's late-runs service turns only runs named
#: "Scheduled" into "Late", which a person reads as a fault.
QUEUED = "Queued"


def create_gate_run(settings: Settings, name: str, version: str, generation: int, criteria_sha256: str) -> str:
    """Create a run of the gate deployment for a version, in the Queued state, without waiting
    for it; returns its id. The same version, generation and criteria give the same run.
    """
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(settings.gate_deployment)
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"name": name, "version": str(version)}, name=f"gate/{name}/v{version}",
            tags=["mdgate"], idempotency_key=gate_key(name, str(version), generation, criteria_sha256),
            state=Scheduled(name=QUEUED))
    return str(run.id)


@dataclass
class GateStart:
    """A gate run created for a version, and whether the version was claimed for it."""

    flow_run: str
    claimed: bool
    reason: str
    """Why the version was not claimed (empty when it was)."""


def start_gate_for_version(settings: Settings, name: str, version: str, generation: int,
                           criteria_sha256: str) -> GateStart:
    """Create a run of the gate deployment for a version and claim the version for it (status
    Running within seconds; the run adopts the claim when it starts). Safe to repeat: the same
    version, generation and criteria give the same run.

    Args:
        settings: the gate settings (deployment name, lease).
        name: registered model name.
        version: model version.
        generation: the version's current claim generation (0 for a version never gated).
        criteria_sha256: the current criteria's hash.

    Raises:
        TransientRegistryError: the claim could not be written (the run exists; repeating finds it).
    """
    run_id = create_gate_run(settings, name, str(version), generation, criteria_sha256)
    outcome = registry_for(settings).claim(name, str(version), settings.lease_s, run_id, queued=True)
    return GateStart(run_id, outcome.claim is not None, outcome.reason or "")


@task(name="find-due", **REGISTRY_TASK)
def find_due(settings: Settings) -> list[VersionInfo]:
    """Versions with no status (or Pending) and Running versions whose lease expired."""
    due = registry_for(settings).versions_to_gate(settings.lease_s)
    return [v for v in due if settings.gates_model(v.name)]


@task(name="start-gate", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[5, 30])
def start_gate(settings: Settings, version: VersionInfo, criteria_sha256: str) -> GateStart:
    """Start a gate for one version (:func:`start_gate_for_version`)."""
    return start_gate_for_version(settings, version.name, version.version, version.claim, criteria_sha256)


@task(name="release-abandoned-run", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=5)
def release_abandoned_run(version: VersionInfo) -> int:
    """Mark the flow run that held an expired lease, and its unfinished task runs, Crashed.

    A gate whose process died (worker killed, machine lost) leaves its task runs Running in
    Prefect, and a running MD task holds a slot of the ``mdgate-gpu`` tag concurrency limit until
    its task run ends: without this, a few dead gates hold every slot and no MD task ever starts
    again. A forced terminal state releases the slots. Returns the number of runs marked.
    """
    try:
        run_id = UUID(version.flow_run or "")
    except ValueError:
        return 0
    message = f"{version.ref}: lease expired without a verdict; the sweep gates it again"
    marked = 0
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return 0
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        for t in tasks:
            if t.state is not None and not t.state.is_final():
                client.set_task_run_state(t.id, Crashed(message=message), force=True)
                marked += 1
        if run.state is not None and not run.state.is_final():
            client.set_flow_run_state(run_id, Crashed(message=message), force=True)
            marked += 1
    return marked


@flow(name=SWEEP_FLOW, persist_result=False)
def sweep_registry(limit: int = 100) -> list[str]:
    """Start gates for what webhooks missed: versions never gated and expired leases.

    Args:
        limit: most gates one sweep starts (the rest wait for the next sweep).

    Returns:
        ``name/version`` of the versions a gate was started for.
    """
    logger = get_run_logger()
    settings = load_settings()
    sha = load_config(settings.config).sha256()
    due = find_due(settings)
    started = []
    for v in due[:limit]:
        if v.status is not None and v.status.value == "Running" and v.flow_run:
            release_abandoned_run(v, return_state=True)  # best effort: never blocks the new gate
        started_gate = start_gate(settings, v, sha)
        why = "no status" if v.status is None else v.status.value
        if v.status is not None and v.status.value == "Running":
            why += " (lease expired)"
        logger.info("gate started for %s (%s): flow run %s (%s)", v.ref, why, started_gate.flow_run,
                    "claimed" if started_gate.claimed else started_gate.reason)
        started.append(v.ref)
    if not due:
        logger.info("nothing to gate")
    return started
