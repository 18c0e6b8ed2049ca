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
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta

from mlflow.exceptions import MlflowException

from registry import types as T
from registry.audit import AuditMixin
from registry.base import iso, translate_errors
from registry.errors import LeaseLostError, PermanentRegistryError, RegistryError
from registry.types import AuditEvent, Claim, ClaimOutcome, EventKind, Status, VersionInfo, utcnow

CLAIM_EXPERIMENT = "mdgate-claims/{name}/v{version}/{generation}"
#: How long a gate run whose claim is being written by its trigger waits to see it.
ADOPT_WAIT_S = 10.0


class ClaimsMixin(AuditMixin):
    """Claims and leases of versions being gated; a forced claim of a version that had an
    outcome is a re-gate, recorded in the audit trail.
    """

    def claim(self, name: str, version: str, lease_s: float, flow_run: str | None = None,
              force: bool = False, queued: bool = False) -> ClaimOutcome:
        """Take the lease on a version (status → Running) for ``flow_run``, or say why not.

        A trigger that has just created a gate run claims the version for that run (``queued``),
        so the version is Running within seconds of its registration; the run then adopts the
        claim (same ``flow_run``) when it starts, and renews the lease.

        Refused when the version already has a verdict (unless ``force``) or is Running with a
        live lease held by another flow run (even with ``force``), or when another gate claimed
        it first.
        """
        info = self.get_version(name, version)
        now = utcnow()
        expires = now + timedelta(seconds=lease_s)
        running = info.status == Status.RUNNING
        if running and flow_run and info.flow_run != flow_run and not info.lease_expired(now, lease_s):
            # The trigger that started this run may be writing its claim for it right now: its
            # tags are written one at a time (status, claim number, flow run last), and a run
            # forked from a warm process can read them in between. Wait for a claim being written.
            for generation in (info.claim + 1, info.claim):
                if generation > 0 and self._lock_taken(name, version, generation) \
                        and self._written_for(name, version, generation, flow_run):
                    return self._adopt(name, version, generation, flow_run, lease_s, write=not queued)
            info = self.get_version(name, version)
            running = info.status == Status.RUNNING
        if running and flow_run and info.flow_run == flow_run and info.claim > 0:
            return self._adopt(name, version, info.claim, flow_run, lease_s, write=not queued)
        if running and not info.lease_expired(now, lease_s):
            until = iso(info.lease_expires_at) if info.lease_expires_at else "?"
            return ClaimOutcome(status=info.status, reason=f"already Running (flow run {info.flow_run}, "
                                                           f"lease until {until})")
        if info.status is not None and info.status.is_final and not force:
            return ClaimOutcome(status=info.status, reason=f"already {info.status.value}")
        generation = info.claim + 1
        while not self._take_lock(name, version, generation):
            if flow_run and self._written_for(name, version, generation, flow_run):
                # The trigger that started this run took the claim for it and was still writing
                # it (a run forked from a warm process starts within a second).
                return self._adopt(name, version, generation, flow_run, lease_s, write=not queued)
            if not self._lock_abandoned(name, version, generation, lease_s):
                return ClaimOutcome(status=info.status, reason=f"claim {generation} taken by another gate")
            generation += 1  # its gate died before writing it to the version: take the next one
        what = "gate queued" if queued else "gate running"
        # In this order (module docstring): a reader never sees the new claim number without a
        # live Running lease, nor its own flow run without the new claim number.
        self.set_tags(name, version, {
            T.LEASE_EXPIRES_AT: iso(expires), T.REASON: what + (f" (flow run {flow_run})" if flow_run else ""),
            T.UPDATED_AT: iso(now), T.STATUS: Status.RUNNING.value, T.CLAIM: str(generation),
            T.FLOW_RUN: flow_run or "",
        })
        if info.status is not None and info.status.is_final:
            self.record(AuditEvent(model=name, version=str(version), kind=EventKind.REGATE,
                                   status=Status.RUNNING.value, flow_run=flow_run or "",
                                   criteria_sha256=info.criteria_sha256 or "",
                                   reason=f"gated again (was {info.status.value}: {info.reason})"))
        return ClaimOutcome(claim=Claim(name=name, version=str(version), generation=generation,
                                        flow_run=flow_run, lease_s=lease_s, expires_at=expires),
                            status=Status.RUNNING)

    def _adopt(self, name: str, version: str, generation: int, flow_run: str, lease_s: float,
               write: bool = True) -> ClaimOutcome:
        """Take over claim ``generation``, written for ``flow_run`` by the other side (the trigger
        that started the run, or the run that started before its trigger wrote), and renew its
        lease. ``write`` False (the trigger): write nothing, since the run may already have
        published its verdict, and a lease or reason written after it would contradict it.
        """
        now = utcnow()
        expires = now + timedelta(seconds=lease_s)
        if write:
            self.set_tags(name, version, {T.LEASE_EXPIRES_AT: iso(expires), T.UPDATED_AT: iso(now),
                                          T.REASON: f"gate running (flow run {flow_run})"})
        return ClaimOutcome(claim=Claim(name=name, version=str(version), generation=generation,
                                        flow_run=flow_run, lease_s=lease_s, expires_at=expires),
                            status=Status.RUNNING)

    def _written_for(self, name: str, version: str, generation: int, flow_run: str,
                     wait_s: float = ADOPT_WAIT_S) -> bool:
        """Does claim ``generation`` show up on the version for ``flow_run`` within ``wait_s``?

        Its lock is taken: whoever took it writes the claim within moments.
        """
        deadline = time.monotonic() + wait_s
        while True:
            info = self.get_version(name, version)
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

    def _lock_taken(self, name: str, version: str, generation: int) -> bool:
        """Has some gate taken the lock of claim ``generation``?"""
        lock = CLAIM_EXPERIMENT.format(name=name, version=version, generation=generation)
        with translate_errors(f"reading claim {generation} of {name}/{version}"):
            return self.client.get_experiment_by_name(lock) is not None  # deleted ones too

    def _lock_abandoned(self, name: str, version: str, generation: int, lease_s: float) -> bool:
        """Was claim ``generation``, which the version does not show, taken more than a lease
        ago? Then its gate died between taking it and writing it, and the next claim is free to
        take (a live gate writes its claim within moments of taking it).
        """
        lock = CLAIM_EXPERIMENT.format(name=name, version=version, generation=generation)
        with translate_errors(f"reading claim {generation} of {name}/{version}"):
            experiment = self.client.get_experiment_by_name(lock)  # deleted ones too
        if experiment is None or not experiment.creation_time:
            return False
        return time.time() - experiment.creation_time / 1000 > lease_s

    def _take_lock(self, name: str, version: str, generation: int) -> bool:
        lock = CLAIM_EXPERIMENT.format(name=name, version=version, generation=generation)
        try:
            with translate_errors(f"claiming {name}/{version}"):
                experiment_id = self.client.create_experiment(lock, tags={"mdgate.lock": "true"})
        except PermanentRegistryError as e:
            cause = e.__cause__
            if isinstance(cause, MlflowException) and cause.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        with contextlib.suppress(RegistryError), translate_errors("hiding the claim"):
            self.client.delete_experiment(experiment_id)
        return True

    def check_claim(self, claim: Claim) -> VersionInfo:
        """The version, if ``claim`` still holds it.

        Raises:
            LeaseLostError: another gate claimed the version since.
        """
        info = self.get_version(claim.name, claim.version)
        if info.claim != claim.generation or info.status != Status.RUNNING:
            raise LeaseLostError(
                f"{claim.name}/{claim.version}: claim {claim.generation} lost (now claim {info.claim}, "
                f"status {info.status.value if info.status else 'none'})"
            )
        return info

    def renew(self, claim: Claim) -> Claim:
        """Extend the lease of a claim that still holds its version.

        Raises:
            LeaseLostError: another gate claimed the version since.
        """
        self.check_claim(claim)
        expires = utcnow() + timedelta(seconds=claim.lease_s)
        self.set_tags(claim.name, claim.version, {T.LEASE_EXPIRES_AT: iso(expires)})
        return claim.model_copy(update={"expires_at": expires})
