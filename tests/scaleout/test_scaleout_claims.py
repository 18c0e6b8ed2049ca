"""Claims while another gate is half-way through writing its own (the race the PostgreSQL burst
test hit: two workers started gates of one version 0.3 s apart, and both ran).

A claim is several tag writes. Gate A is stopped after each of them in turn, and gate B claims
the same version meanwhile: B must never get a claim, and A, resumed, holds claim 1. A claim
whose gate died between taking it and writing it is taken over once a lease has passed. Against
the session's MLflow server; no MD.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from registry import Registry, Status

pytestmark = pytest.mark.integration

#: Tags a first claim writes (lease, reason, updated, status, claim, flow run).
CLAIM_TAG_WRITES = 6


class PausedWriter(Registry):
    """A registry whose next multi-tag write stops after ``after`` tags until resumed."""

    def __init__(self, tracking_uri: str, after: int):
        super().__init__(tracking_uri)
        self.after = after
        self.paused, self.resume = threading.Event(), threading.Event()

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """The first multi-tag write in two parts, with a pause between."""
        items = list(tags.items())
        if len(items) < 2 or self.paused.is_set():
            return super().set_tags(name, version, tags)
        super().set_tags(name, version, dict(items[:self.after]))
        self.paused.set()
        assert self.resume.wait(60)
        super().set_tags(name, version, dict(items[self.after:]))


def new_version(registry: Registry, name: str) -> str:
    """A registered version with no status (nothing to gate: only its tags are used)."""
    client = registry.client
    run = client.create_run("0")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    return client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version


@pytest.mark.parametrize("after", range(CLAIM_TAG_WRITES + 1))
def test_no_second_claim_while_the_first_is_being_written(registry: Registry, after: int) -> None:
    name = f"claims-{uuid.uuid4().hex[:8]}"
    version = new_version(registry, name)
    writer = PausedWriter(registry.tracking_uri, after)
    outcome: dict[str, Any] = {}
    a = threading.Thread(target=lambda: outcome.setdefault("a", writer.claim(name, version, 600, "run-a")))
    a.start()
    try:
        assert writer.paused.wait(60)
        b = registry.claim(name, version, 600, "run-b")
        assert b.claim is None, f"a second claim with {after} of A's tags written: {b}"
    finally:
        writer.resume.set()
        a.join(60)
    assert outcome["a"].claim is not None and outcome["a"].claim.generation == 1
    info = registry.get_version(name, version)
    assert (info.status, info.claim, info.flow_run) == (Status.RUNNING, 1, "run-a")
    # the run a trigger claimed for adopts that claim when it starts
    adopted = registry.claim(name, version, 600, "run-a")
    assert adopted.claim is not None and adopted.claim.generation == 1


def test_a_claim_abandoned_before_it_was_written_is_skipped_after_a_lease(registry: Registry) -> None:
    import time

    from registry.client import CLAIM_EXPERIMENT

    name = f"claims-{uuid.uuid4().hex[:8]}"
    version = new_version(registry, name)
    # a gate took claim 1 and died before writing it to the version
    registry.client.create_experiment(CLAIM_EXPERIMENT.format(name=name, version=version, generation=1))
    assert registry.claim(name, version, 600, "run-x").claim is None  # within a lease it may be alive
    time.sleep(1.5)
    taken = registry.claim(name, version, 1.0, "run-y")  # a lease later it is not
    assert taken.claim is not None and taken.claim.generation == 2
    assert registry.get_version(name, version).claim == 2
