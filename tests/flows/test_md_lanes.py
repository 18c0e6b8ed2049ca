"""The gate's MD lanes: one driver (``run_lanes``) over every executor, and one guard per lane.

The driver and the guard are checked with a scripted executor (no Prefect, no MD); the Dask
executor's progress relay with a stand-in scheduler client; threads and processes end to end, as
Prefect tasks of a flow on the session's Prefect server, against the engine's own ``run_md``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from prefect import flow

from flows.dask_tasks import DaskLanes
from flows.md_executors import ProcessLanes, ThreadLanes, executor_for
from flows.md_lanes import Lane, LaneGuard, make_lanes, md_lane, run_lanes, steps_per_molecule
from flows.settings import load_settings
from mdgate.config import parse_config
from mdgate.errors import MDAbortedError, MDTimeoutError, ModelInterfaceError
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_potential
from mdgate.stages.md import run_md
from tests.integration import Stack
from tests.models import quick


class _Progress:
    """What the driver tells the gate's progress."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int, int, bool]] = []
        self.finished: list[str] = []
        self.beats = 0

    def __call__(self, molecule: str, step: int, n_steps: int, running: bool) -> None:
        self.steps.append((molecule, step, n_steps, running))

    def finish(self, molecule: str) -> None:
        self.finished.append(molecule)

    def beat(self) -> None:
        self.beats += 1


class _Scripted:
    """An executor whose lanes end one per ``wait``, in the order submitted, as scripted by lane
    name: a result, an error, or (``"stopped"``) MDAbortedError once the abort went out.
    """

    def __init__(self, slots: int, script: dict[str, Any], updates: list[tuple[str, int, int, bool]] = ()):
        self.slots, self.script, self.updates = slots, script, list(updates)
        self.running: list[Lane] = []
        self.submitted: list[str] = []
        self.most_at_once = 0
        self.aborted = False
        self.entered = self.exited = False

    def __enter__(self) -> _Scripted:
        self.entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited = True

    def submit(self, lane: Lane) -> None:
        self.running.append(lane)
        self.submitted.append(lane.name)
        self.most_at_once = max(self.most_at_once, len(self.running))

    def wait(self, timeout_s: float) -> list[Lane]:
        return [self.running[0]] if self.running else []

    def result(self, lane: Lane) -> list[Any]:
        self.running.remove(lane)
        outcome = self.script[lane.name]
        if outcome == "stopped":
            assert self.aborted, "a lane stops only once the abort went out"
            raise MDAbortedError(f"{lane.name} stopped")
        if isinstance(outcome, BaseException):
            raise outcome
        return [f"run of {n}" for n in lane.names]

    def abort(self) -> None:
        self.aborted = True

    def progress(self) -> list[tuple[str, int, int, bool]]:
        out, self.updates = self.updates, []
        return out


def mol(name: str, n_atoms: int = 3) -> Molecule:
    return cast(Molecule, SimpleNamespace(name=name, atoms=[None] * n_atoms))


def lanes(*names: str) -> list[Lane]:
    return make_lanes([[mol(n) for n in name.split("+")] for name in names], "md", 10.0)


def test_the_driver_runs_lanes_in_order_within_the_slots_and_relays_progress() -> None:
    executor = _Scripted(2, dict.fromkeys(["md-a+b", "md-c", "md-d"]), updates=[("a", 5, 400, True)])
    progress = _Progress()
    runs = run_lanes(executor, lanes("a+b", "c", "d"), progress, poll_s=0.0)
    assert runs == {"a": "run of a", "b": "run of b", "c": "run of c", "d": "run of d"}
    assert executor.submitted == ["md-a+b", "md-c", "md-d"] and executor.most_at_once == 2
    assert executor.entered and executor.exited and not executor.aborted
    assert progress.finished == ["a", "b", "c", "d"] and progress.steps == [("a", 5, 400, True)]
    assert progress.beats >= 3  # the lease is renewed while lanes run, whether or not they report


def test_the_first_real_failure_stops_the_others_and_is_raised() -> None:
    # md-a fails; md-b (running) is stopped by the abort; md-c never starts
    executor = _Scripted(2, {"md-a": MDTimeoutError("MD of a timed out"), "md-b": "stopped", "md-c": None})
    with pytest.raises(MDTimeoutError, match="MD of a timed out"):
        run_lanes(executor, lanes("a", "b", "c"), _Progress(), poll_s=0.0)
    assert executor.aborted and executor.submitted == ["md-a", "md-b"] and executor.exited
    # a lane stopped by the abort is never the failure reported, even when it ends first
    executor = _Scripted(2, {"md-a": MDAbortedError("a stopped"), "md-b": ModelInterfaceError("NaN forces"),
                            "md-c": None})
    with pytest.raises(ModelInterfaceError, match="NaN forces"):
        run_lanes(executor, lanes("a", "b", "c"), _Progress(), poll_s=0.0)


def test_the_guard_stops_a_lane_on_abort_and_deadline_and_passes_progress_on() -> None:
    abort, progress = threading.Event(), _Progress()
    guard = LaneGuard(abort, timeout_s=0.2, progress=progress)
    guard("ethanol", 1, 100, True)  # not started: no deadline yet
    guard.start()
    guard("ethanol", 2, 100, True)
    assert progress.steps == [("ethanol", 1, 100, True), ("ethanol", 2, 100, True)]
    assert guard.hard_timeout_s == pytest.approx(0.2 * 1.1 + 1)
    time.sleep(0.25)
    with pytest.raises(MDTimeoutError, match=r"MD of ethanol timed out after 0.2 s \(step 3 of 100\)"):
        guard("ethanol", 3, 100, True)
    abort.set()
    with pytest.raises(MDAbortedError, match="another molecule failed"):
        guard("ethanol", 4, 100, True)


def test_dask_lanes_relay_each_published_step_once_with_its_own_step_count() -> None:
    settings = load_settings(task_runner="dask")
    executor = DaskLanes(settings, md_lane, None, None, 1)
    [lane] = lanes("ethanol")
    published = {"value": None}
    executor._client = SimpleNamespace(get_metadata=lambda key, default=None: published["value"])
    executor._futures[lane] = SimpleNamespace(wrapped_future=SimpleNamespace(key="mdgate-md-x-ethanol"))
    assert executor.progress() == []  # not started
    published["value"] = [120, 400, True]  # 400: NVE and stress steps, as run_md counts them
    assert executor.progress() == [("ethanol", 120, 400, True)]
    assert executor.progress() == []  # nothing new
    published["value"] = [130, 400, False]
    assert executor.progress() == [("ethanol", 130, 400, False)]


def test_executors_and_lanes_from_the_settings(packaged_molecules: list[Molecule]) -> None:
    mols = packaged_molecules[:3]
    config = parse_config(quick({"md": {"n_steps": 100, "device": "cpu"}}))
    progress = _Progress()

    def plan(**kw: Any) -> tuple[Any, list[Lane]]:
        return executor_for(load_settings(md_timeout_s=10.0, **kw), md_lane, None, config, mols, progress, "pre")

    executor, by_lanes = plan(task_runner="local", md_parallel=2, md_batch="lanes")
    assert type(executor) is ThreadLanes and executor.slots == 2 and len(by_lanes) == 2
    assert sorted(n for lane in by_lanes for n in lane.names) == sorted(m.name for m in mols)
    assert all(lane.timeout_s == 10.0 * len(lane.molecules) for lane in by_lanes)
    executor, per_molecule = plan(task_runner="processes", md_parallel=2, md_batch="molecule")
    assert type(executor) is ProcessLanes and [lane.timeout_s for lane in per_molecule] == [10.0] * 3
    largest_first = sorted(mols, key=lambda m: len(m.atoms), reverse=True)
    assert [lane.name for lane in per_molecule] == [f"pre-{m.name}" for m in largest_first]
    executor, on_dask = plan(task_runner="dask", md_parallel=2)
    assert type(executor) is DaskLanes and executor.slots == 3  # all at once: the cluster bounds them
    assert [lane.name for lane in on_dask] == [f"pre-{m.name}" for m in mols]
    stress = config.stress.n_steps if config.stress.enabled else 0
    assert steps_per_molecule(config) == max(100, stress)


@pytest.fixture(scope="module")
def potential(good_model_path: Path) -> Any:
    meta = ModelMeta.model_validate(json.loads(good_model_path.with_suffix(".json").read_text()))
    return load_potential(good_model_path, meta, "cpu")


@pytest.mark.integration
@pytest.mark.parametrize("runner", ["local", "processes"])
def test_threads_and_processes_give_the_engines_runs(stack: Stack, potential: Any,
                                                     packaged_molecules: list[Molecule], runner: str) -> None:
    mols = packaged_molecules[:3]
    config = parse_config(quick({"md": {"n_steps": 60, "n_replicas": 1, "device": "cpu", "compile": "off"}}))
    settings = load_settings(task_runner=runner, md_parallel=2, md_batch="lanes", cores=2)
    progress = _Progress()

    @flow(name=f"lanes-{runner}", persist_result=False)
    def lanes_flow() -> tuple[dict[str, Any], list[Lane]]:
        executor, planned = executor_for(settings, md_lane, potential, config, mols, progress)
        return run_lanes(executor, planned, progress, poll_s=0.2), planned

    runs, planned = lanes_flow()
    assert sorted(progress.finished) == sorted(m.name for m in mols)
    assert any(s[0] == mols[0].name for s in progress.steps), "the lanes reported their steps"
    for lane in planned:
        for m, here in zip(lane.molecules, run_md(potential, lane.molecules, config), strict=True):
            there = runs[m.name]
            assert [r.steps_done for r in there.nve.replicas] == [r.steps_done for r in here.nve.replicas]
            np.testing.assert_allclose(there.nve.replicas[0].series["e_tot_minus_e0_meV_per_atom"],
                                       here.nve.replicas[0].series["e_tot_minus_e0_meV_per_atom"], rtol=1e-4,
                                       atol=1e-3)


@pytest.mark.integration
@pytest.mark.parametrize("runner", ["local", "processes"])
def test_a_lane_past_its_deadline_ends_the_md_as_a_timeout(stack: Stack, potential: Any,
                                                           packaged_molecules: list[Molecule], runner: str) -> None:
    mols = packaged_molecules[:2]
    config = parse_config(quick({"md": {"n_steps": 200_000, "n_replicas": 1, "device": "cpu", "compile": "off"}}))
    settings = load_settings(task_runner=runner, md_parallel=2, md_batch="molecule", cores=2, md_timeout_s=3.0)

    @flow(name=f"lanes-timeout-{runner}", persist_result=False)
    def lanes_flow() -> dict[str, Any]:
        executor, planned = executor_for(settings, md_lane, potential, config, mols, _Progress())
        return run_lanes(executor, planned, _Progress(), poll_s=0.2)

    t0 = time.monotonic()
    with pytest.raises(MDTimeoutError, match="timed out after 3 s"):
        lanes_flow()
    assert time.monotonic() - t0 < 90, "the lanes stopped instead of running their MD out"
