"""Claims: the lease a gate holds on a version while it runs.

The status tag is the lease. A claim is made race-safe by an atomic create: claim number ``g``
of a version is the MLflow experiment ``mdgate-claims/<name>/v<version>/<g>``, and experiment
names are unique in MLflow's SQL store, so of any number of gates that read the same state and
try to claim, exactly one succeeds. The experiment is deleted at once (its name stays taken).

The claim's tags are separate writes, so a gate may read a version while another gate is
writing its claim: the claim number is written after the status (Running, with its lease), so a
reader that sees the new number also sees a live lease and backs off, and one that sees the old
number tries the same lock and loses. The flow run is written last: whoever finds its own flow
run there also finds the claim number it adopts.

A forced claim of a version that had an outcome is a re-gate, recorded in the audit trail.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta

from mlflow.exceptions import MlflowException

from registry import types as T
from registry.audit import record
from registry.connection import Connection, translate_errors
from registry.errors import LeaseLostError, PermanentRegistryError, RegistryError
from registry.text import iso
from registry.types import AuditEvent, Claim, ClaimOutcome, EventKind, Status, VersionInfo, utcnow
from registry.versions import get_version, set_tags

CLAIM_EXPERIMENT = "mdgate-claims/{name}/v{version}/{generation}"
#: How long a gate run whose claim is being written by its trigger waits to see it.
ADOPT_WAIT_S = 10.0


def claim(conn: Connection, name: str, version: str, lease_s: float, flow_run: str | None = None,
          force: bool = False, queued: bool = False) -> ClaimOutcome:
    """Take the lease on a version (status → Running) for ``flow_run``, or say why not.

    A trigger that has just created a gate run claims the version for that run (``queued``),
    so the version is Running within seconds of its registration; the run then adopts the
    claim (same ``flow_run``) when it starts, and renews the lease.

    Refused when the version already has a verdict (unless ``force``) or is Running with a
    live lease held by another flow run (even with ``force``), or when another gate claimed
    it first.
    """
    info = get_version(conn, name, version)
    now = utcnow()
    expires = now + timedelta(seconds=lease_s)
    running = info.status == Status.RUNNING
    if running and flow_run and info.flow_run != flow_run and not info.lease_expired(now, lease_s):
        # The trigger that started this run may be writing its claim for it right now: its
        # tags are written one at a time (status, claim number, flow run last), and a run
        # forked from a warm process can read them in between. Wait for a claim being written.
        for generation in (info.claim + 1, info.claim):
            if generation > 0 and lock_taken(conn, name, version, generation) \
                    and written_for(conn, name, version, generation, flow_run):
                return adopt(conn, name, version, generation, flow_run, lease_s, write=not queued)
        info = get_version(conn, name, version)
        running = info.status == Status.RUNNING
    if running and flow_run and info.flow_run == flow_run and info.claim > 0:
        return adopt(conn, name, version, info.claim, flow_run, lease_s, write=not queued)
    if running and not info.lease_expired(now, lease_s):
        until = iso(info.lease_expires_at) if info.lease_expires_at else "?"
        return ClaimOutcome(status=info.status, reason=f"already Running (flow run {info.flow_run}, "
                                                       f"lease until {until})")
    if info.status is not None and info.status.is_final and not force:
        return ClaimOutcome(status=info.status, reason=f"already {info.status.value}")
    generation = info.claim + 1
    while not take_lock(conn, name, version, generation):
        if flow_run and written_for(conn, name, version, generation, flow_run):
            # The trigger that started this run took the claim for it and was still writing
            # it (a run forked from a warm process starts within a second).
            return adopt(conn, name, version, generation, flow_run, lease_s, write=not queued)
        if not lock_abandoned(conn, name, version, generation, lease_s):
            return ClaimOutcome(status=info.status, reason=f"claim {generation} taken by another gate")
        generation += 1  # its gate died before writing it to the version: take the next one
    return _write_claim(conn, info, Claim(name=name, version=str(version), generation=generation,
                                          flow_run=flow_run, lease_s=lease_s, expires_at=expires), now, queued)


def _write_claim(conn: Connection, info: VersionInfo, claim: Claim, now: datetime, queued: bool) -> ClaimOutcome:
    """Write ``claim``, whose lock this gate took, to the version (``info``: as it was read)."""
    flow_run = claim.flow_run
    what = "gate queued" if queued else "gate running"
    # In this order (module docstring): a reader never sees the new claim number without a
    # live Running lease, nor its own flow run without the new claim number.
    set_tags(conn, claim.name, claim.version, {
        T.LEASE_EXPIRES_AT: iso(claim.expires_at), T.REASON: what + (f" (flow run {flow_run})" if flow_run else ""),
        T.UPDATED_AT: iso(now), T.STATUS: Status.RUNNING.value, T.CLAIM: str(claim.generation),
        T.FLOW_RUN: flow_run or "",
    })
    if info.status is not None and info.status.is_final:
        record(conn, AuditEvent(model=claim.name, version=claim.version, kind=EventKind.REGATE,
                                status=Status.RUNNING.value, flow_run=flow_run or "",
                                criteria_sha256=info.criteria_sha256 or "",
                                reason=f"gated again (was {info.status.value}: {info.reason})"))
    return ClaimOutcome(claim=claim, status=Status.RUNNING)


def adopt(conn: Connection, name: str, version: str, generation: int, flow_run: str, lease_s: float,
          write: bool = True) -> ClaimOutcome:
    """Take over claim ``generation``, written for ``flow_run`` by the other side (the trigger
    that started the run, or the run that started before its trigger wrote), and renew its
    lease. ``write`` False (the trigger): write nothing, since the run may already have
    published its verdict, and a lease or reason written after it would contradict it.
    """
    now = utcnow()
    expires = now + timedelta(seconds=lease_s)
    if write:
        set_tags(conn, name, version, {T.LEASE_EXPIRES_AT: iso(expires), T.UPDATED_AT: iso(now),
                                       T.REASON: f"gate running (flow run {flow_run})"})
    return ClaimOutcome(claim=Claim(name=name, version=str(version), generation=generation,
                                    flow_run=flow_run, lease_s=lease_s, expires_at=expires),
                        status=Status.RUNNING)


def written_for(conn: Connection, name: str, version: str, generation: int, flow_run: str,
                wait_s: float = ADOPT_WAIT_S) -> bool:
    """Does claim ``generation`` show up on the version for ``flow_run`` within ``wait_s``?

    Its lock is taken: whoever took it writes the claim within moments.
    """
    deadline = time.monotonic() + wait_s
    while True:
        info = get_version(conn, name, version)
        if info.claim > generation:
            return False
        if info.claim == generation:
            if info.flow_run == flow_run and info.status == Status.RUNNING:
                return True
            # the claim number is written before the flow run (set_tags writes one at a time)
            deadline = min(deadline, time.monotonic() + ADOPT_WAIT_S / 2)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def lock_taken(conn: Connection, name: str, version: str, generation: int) -> bool:
    """Has some gate taken the lock of claim ``generation``?"""
    lock = CLAIM_EXPERIMENT.format(name=name, version=version, generation=generation)
    with translate_errors(f"reading claim {generation} of {name}/{version}"):
        return conn.mlflow.get_experiment_by_name(lock) is not None  # deleted ones too


def lock_abandoned(conn: Connection, name: str, version: str, generation: int, lease_s: float) -> bool:
    """Was claim ``generation``, which the version does not show, taken more than a lease
    ago? Then its gate died between taking it and writing it, and the next claim is free to
    take (a live gate writes its claim within moments of taking it).
    """
    lock = CLAIM_EXPERIMENT.format(name=name, version=version, generation=generation)
    with translate_errors(f"reading claim {generation} of {name}/{version}"):
        experiment = conn.mlflow.get_experiment_by_name(lock)  # deleted ones too
    if experiment is None or not experiment.creation_time:
        return False
    return time.time() - experiment.creation_time / 1000 > lease_s


def take_lock(conn: Connection, name: str, version: str, generation: int) -> bool:
    """Take the lock of claim ``generation`` (create its experiment); ``False`` if another gate has it."""
    lock = CLAIM_EXPERIMENT.format(name=name, version=version, generation=generation)
    try:
        with translate_errors(f"claiming {name}/{version}"):
            lock_id = conn.mlflow.create_experiment(lock, tags={"mdgate.lock": "true"})
    except PermanentRegistryError as e:
        cause = e.__cause__
        if isinstance(cause, MlflowException) and cause.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    with contextlib.suppress(RegistryError), translate_errors("hiding the claim"):
        conn.mlflow.delete_experiment(lock_id)
    return True


def check_claim(conn: Connection, claim: Claim) -> VersionInfo:
    """The version, if ``claim`` still holds it.

    Raises:
        LeaseLostError: another gate claimed the version since.
    """
    info = get_version(conn, claim.name, claim.version)
    if info.claim != claim.generation or info.status != Status.RUNNING:
        raise LeaseLostError(
            f"{claim.name}/{claim.version}: claim {claim.generation} lost (now claim {info.claim}, "
            f"status {info.status.value if info.status else 'none'})"
        )
    return info


def renew(conn: Connection, claim: Claim) -> Claim:
    """Extend the lease of a claim that still holds its version.

    Raises:
        LeaseLostError: another gate claimed the version since.
    """
    check_claim(conn, claim)
    expires = utcnow() + timedelta(seconds=claim.lease_s)
    set_tags(conn, claim.name, claim.version, {T.LEASE_EXPIRES_AT: iso(expires)})
    return claim.model_copy(update={"expires_at": expires})


def release(conn: Connection, claim: Claim) -> None:
    """End the lease of ``claim`` (its verdict is published)."""
    with translate_errors(f"releasing the lease of {claim.name}/{claim.version}"):
        conn.mlflow.delete_model_version_tag(claim.name, claim.version, T.LEASE_EXPIRES_AT)
