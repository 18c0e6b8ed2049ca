"""The gate's MD in worker processes (``MDGATE_TASK_RUNNER=processes``): same results as in the
flow's own process, progress across the process boundary, and a stop that reaches the workers.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.md_processes import MDProcessPool, start_method
from mdgate.config import parse_config
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_potential
from mdgate.stages.md import run_md
from tests.models import quick


class Stop(Exception):
    """What the waiting task's callback raises to stop the MD."""


@pytest.fixture(scope="module")
def potential(good_model_path: Path):
    meta = ModelMeta.model_validate(json.loads(good_model_path.with_suffix(".json").read_text()))
    return load_potential(good_model_path, meta, "cpu")


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_give_the_results_of_the_flows_process(potential, packaged_molecules: list[Molecule], start: str,
                                                        monkeypatch) -> None:
    """Forked (the default for one-thread workers) or spawned, the workers compute what the flow's
    process computes, and report their progress.
    """
    by = {m.name: m for m in packaged_molecules}
    lanes = [[by["ethanol"], by["malonaldehyde"]], [by["uracil"]]]  # a lane of two molecules, one of one
    mols = [m for lane in lanes for m in lane]
    config = parse_config(quick({"md": {"n_steps": 200, "n_replicas": 2, "device": "cpu", "compile": "off"}}))
    seen: dict[str, list[tuple[int, bool]]] = {m.name: [] for m in mols}
    pids = set()
    # The gate's process has run multi-threaded torch (OpenMP) before it forks its workers.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.randn(512, 512) @ torch.randn(512, 512)
    torch.set_num_threads(threads_before)
    monkeypatch.delenv("MDGATE_MD_START", raising=False)
    assert start_method(1) == "fork" and start_method(2) == "spawn"
    monkeypatch.setenv("MDGATE_MD_START", start)
    with MDProcessPool(potential, n_workers=2, threads=1) as pool:
        assert pool.start_method == start
        pids = {f.result(timeout=120) for f in pool._warming}
        with ThreadPoolExecutor(2) as threads:  # as the gate's MD tasks: both wait at once
            futures = [threads.submit(pool.run, lane, config, lambda n, s, t, r: seen[n].append((s, r)))
                       for lane in lanes]
            runs = {m.name: r for lane, f in zip(lanes, futures, strict=True)
                    for m, r in zip(lane, f.result(), strict=True)}
    assert len(pids) == 2 and os.getpid() not in pids
    here_runs = {m.name: r for lane in lanes for m, r in zip(lane, run_md(potential, lane, config), strict=True)}
    for mol in mols:
        here, there = here_runs[mol.name], runs[mol.name]
        for stage in ("nve", "stress"):
            a, b = getattr(here, stage), getattr(there, stage)
            assert [r.steps_done for r in a.replicas] == [r.steps_done for r in b.replicas]
            for ra, rb in zip(a.replicas, b.replicas, strict=True):
                key = "e_tot_minus_e0_meV_per_atom" if stage == "nve" else "temperature_K"
                np.testing.assert_allclose(rb.series[key], ra.series[key], rtol=1e-4, atol=1e-3)
        assert len(there.frames) == len(here.frames)
        assert seen[mol.name], "the waiting task heard of its worker's progress"


def test_a_stop_reaches_the_workers(potential, packaged_molecules: list[Molecule]) -> None:
    """The waiting task's callback raises (another molecule failed, a deadline): the worker stops
    and the pool ends at once instead of running the MD out.
    """
    mol = next(m for m in packaged_molecules if m.name == "aspirin")
    config = parse_config(quick({"md": {"n_steps": 200_000, "n_replicas": 1, "device": "cpu", "compile": "off"}}))
    t0 = time.monotonic()

    def tick(name: str, step: int, n_steps: int, running: bool) -> None:
        if time.monotonic() - t0 > 3.0:
            raise Stop(f"{name} stopped at step {step}")

    with pytest.raises(Stop), MDProcessPool(potential, n_workers=1, threads=1) as pool:
        pool.run([mol], config, tick)
    assert time.monotonic() - t0 < 60
