"""Live MD progress of a gate: one Prefect progress artifact, updated by the MD tasks, and the
lease renewed while MD runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_logger

logger = get_logger("mdgate.progress")


class GateProgress:
    """Shared by the concurrent MD tasks of one gate (thread-safe).

    Args:
        key: artifact key (lowercase letters, digits, dashes).
        steps: MD steps asked per molecule.
        renew: called at most every ``renew_every_s`` while MD runs (extends the lease).
        min_interval_s: smallest interval between artifact updates.
    """

    def __init__(self, key: str, steps: dict[str, int], renew: Callable[[], object] | None = None,
                 renew_every_s: float = 600.0, min_interval_s: float = 1.0):
        self.steps = dict(steps)
        self.total = max(1, sum(steps.values()))
        self.done = dict.fromkeys(steps, 0)
        self.renew = renew
        self.renew_every_s = renew_every_s
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last_update = 0.0
        self._last_renew = time.monotonic()
        artifact = create_progress_artifact(0.0, key=key, description=f"MD steps done over {len(steps)} molecules")
        if not isinstance(artifact, UUID):  # a coroutine: called from async code, which the gate never is
            raise TypeError("GateProgress must be created outside an event loop")
        self.artifact_id: UUID = artifact

    @property
    def percent(self) -> float:
        """Steps done over steps asked, in %."""
        return 100.0 * sum(self.done.values()) / self.total

    def __call__(self, molecule: str, step: int, n_steps: int, running: bool) -> None:
        """The engine's progress callback (``mdgate.stages.md.ProgressFn``)."""
        now = time.monotonic()
        with self._lock:
            # A trajectory stopped early (a failed check) is finished: count its steps as done.
            self.done[molecule] = step if running else n_steps
            update = now - self._last_update >= self.min_interval_s
            if update:
                self._last_update = now
        if update:
            self._update()
        self.beat()

    def beat(self) -> None:
        """Renew the lease if it is due (MD is running, whether or not a lane reported a step)."""
        now = time.monotonic()
        with self._lock:
            renew = self.renew if self.renew is not None and now - self._last_renew >= self.renew_every_s else None
            if renew is not None:
                self._last_renew = now
        if renew is not None:
            try:
                renew()
            except Exception as e:  # a lost lease is found again when publishing
                logger.warning("lease renewal failed: %s", e)

    def finish(self, molecule: str) -> None:
        """Mark a molecule's MD as done."""
        with self._lock:
            self.done[molecule] = self.steps.get(molecule, 0)
        self._update()

    def _update(self) -> None:
        try:
            update_progress_artifact(self.artifact_id, min(100.0, self.percent))
        except Exception as e:  # progress is cosmetic: never fail MD for it
            logger.debug("progress update failed: %s", e)
