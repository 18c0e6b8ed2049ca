"""Live progress of the demo's gates, read from the Prefect API: what the Prefect UI shows.

Per version: the gate flow run named in the version's ``mdgate.flow_run`` tag, its task runs
(the running one is the stage; the molecules of ``md-<molecule>+<molecule>...`` runs that completed
are the molecules done) and
its progress artifact ``<name>-v<version>-progress`` (MD steps done over steps asked, in %, and
"over N molecules" in its description; ``flows/progress.py`` writes it). One line per version:
redrawn in place on a terminal, appended when it changes (at most every ``every_s``) otherwise.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from uuid import UUID

from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.tasks import slug

#: Prefect's default task run name is the task's name plus ``-`` and a short hex key.
_SUFFIX = re.compile(r"-([0-9a-f]{3}|\d+)$")
_MOLECULES = re.compile(r"over (\d+) molecules")
#: Flow run states of a gate that waits for a place (``MDGATE_MAX_GATES`` gates run at a time).
QUEUED_STATES = frozenset({"Queued", "Scheduled", "Late", "AwaitingConcurrencySlot"})


@dataclass
class GateView:
    """What one gate is doing, as the Prefect API tells it."""

    state: str = ""
    """The flow run's state name (``Running``, ``Scheduled``, ``Completed`` ...)."""
    stage: str = ""
    """The running task(s): ``claim``, ``load``, ``sanity``, ``md``, ``oracle`` ..."""
    molecules_done: int = 0
    molecules_total: int | None = None
    md_percent: float | None = None
    elapsed_s: float | None = None


def task_stage(name: str) -> str:
    """``md-ethanol+uracil`` → ``md``; ``sanity-7c3`` → ``sanity``; ``publish-error-0b1`` → ``publish-error``."""
    return "md" if name.startswith("md-") else _SUFFIX.sub("", name)


def summarize_tasks(task_runs: Iterable[Any]) -> tuple[str, int]:
    """The stage (running tasks, else the last one started) and the MD tasks completed.

    Args:
        task_runs: Prefect ``TaskRun`` objects (``name``, ``state_type``, ``start_time``).
    """
    runs = sorted(task_runs, key=lambda t: (t.start_time is None, t.start_time or 0))
    running = [task_stage(t.name) for t in runs if _state(t) == "RUNNING"]
    done = sum(len(t.name[len("md-"):].split("+")) for t in runs
               if t.name.startswith("md-") and _state(t) == "COMPLETED")
    if running:
        return "+".join(dict.fromkeys(running)), done
    started = [t for t in runs if t.start_time is not None]
    return (task_stage(started[-1].name) if started else ""), done


def _state(run: Any) -> str:
    state_type = getattr(run, "state_type", None)
    return str(getattr(state_type, "value", state_type) or "")


def read_view(client: Any, model: str, version: str, flow_run: str | None) -> GateView:
    """The gate of ``model`` v``version`` (flow run id from its ``mdgate.flow_run`` tag)."""
    try:
        run_id = UUID(flow_run or "")
    except ValueError:
        return GateView(state="waiting for a flow run")
    run = client.read_flow_run(run_id)
    view = GateView(state=run.state_name or _state(run))
    if run.start_time is not None:
        end = run.end_time or datetime.now(UTC)
        view.elapsed_s = max(0.0, (end - run.start_time).total_seconds())
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    view.stage, view.molecules_done = summarize_tasks(tasks)
    key = f"{slug(model)}-v{slug(str(version))}-progress"
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    if artifacts:
        latest = max(artifacts, key=lambda a: a.updated or a.created)
        if isinstance(latest.data, int | float):
            view.md_percent = float(latest.data)
        if match := _MOLECULES.search(latest.description or ""):
            view.molecules_total = int(match.group(1))
    return view


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


def progress_line(label: str, status: str, view: GateView | None, steps_per_molecule: int | None) -> str:
    """One line: version, status, and while it runs: stage, molecules done, MD steps, elapsed.

    Args:
        label: ``v3 student_5x``.
        status: the version's ``mdgate.status`` (``Running``, ``Approved`` ...).
        view: the gate's progress, if it has a flow run.
        steps_per_molecule: MD steps asked per molecule (the longer of NVE and stress), to turn
            the artifact's percentage into steps.
    """
    if view is not None and not view.stage and view.state in QUEUED_STATES:
        # claimed by its trigger (the registry says Running), waiting for a gate's place
        return f"{label:<24} {'Queued':<9}"
    parts = [f"{label:<24} {status:<9}"]
    if view is not None:
        if view.stage:
            parts.append(f"{view.stage:<8}")
        elif view.state:
            parts.append(f"{view.state:<8}")
        if view.molecules_total:
            parts.append(f"molecules {view.molecules_done}/{view.molecules_total}")
        if view.md_percent is not None:
            md = f"MD {view.md_percent:3.0f}%"
            if view.molecules_total and steps_per_molecule:
                total = view.molecules_total * steps_per_molecule
                md += f" ({round(view.md_percent / 100 * total):,}/{total:,} steps)"
            parts.append(md)
        if view.elapsed_s is not None:
            parts.append(_clock(view.elapsed_s))
    return "  ".join(parts).rstrip()


class Board:
    """The lines of all versions: redrawn in place on a terminal, appended sparsely otherwise.

    Args:
        out: the stream (``sys.stdout``).
        live: redraw in place (default: ``out`` is a terminal).
        every_s: off a terminal, a changed line is written at most this often (status changes
            always are).
        width: lines are cut to this width on a terminal (a wrapped line breaks the redraw).
    """

    def __init__(self, out: TextIO | None = None, live: bool | None = None, every_s: float = 60.0,
                 width: int = 100, clock: Callable[[], float] = time.monotonic):
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.every_s = every_s
        self.width = width
        self.clock = clock
        self._drawn = 0
        self._shown: dict[str, tuple[str, str, float]] = {}

    def update(self, lines: dict[str, tuple[str, str]]) -> None:
        """Show ``{key: (status, line)}``: in place, or append the lines that changed enough."""
        if self.live:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F")
            for _, line in lines.values():
                self.out.write("\x1b[2K  " + line[: self.width - 2] + "\n")
            self._drawn = len(lines)
            self.out.flush()
            return
        now = self.clock()
        for key, (status, line) in lines.items():
            last = self._shown.get(key)
            if last is None or last[0] != status or (last[1] != line and now - last[2] >= self.every_s):
                self.out.write(f"  {time.strftime('%H:%M:%S')} {line}\n")
                self._shown[key] = (status, line, now)
        self.out.flush()
