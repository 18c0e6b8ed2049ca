"""The report's plots drawn in worker processes: the same files as drawn here, and nothing lost
when a worker dies or a plot raises.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mdgate.checks.table import Stage
from mdgate.checks.verdict import md_stage_result
from mdgate.config import GateConfig
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta
from mdgate.report import plots
from mdgate.report.markdown import write_report
from mdgate.results import Timing
from mdgate.runner import assemble, model_info
from mdgate.stages.md import run_md
from tests.models import MorsePairPotential, quick, tetrahedron

pytestmark = pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                                reason="plots are drawn in forked workers only where fork exists")


@pytest.fixture(scope="module")
def result():
    """A result with NVE and stress molecules: two plots per molecule."""
    config = GateConfig.model_validate(quick({"md": {"n_steps": 60, "record_every": 5}}))
    mols = [Molecule(f"tetra_{k}", tetrahedron("C4", rattle_A=0.01, seed=k)) for k in range(4)]
    pot = MorsePairPotential()
    runs = run_md(pot, mols, config)  # type: ignore[arg-type]
    stress = md_stage_result(Stage.STRESS, [r.stress for r in runs if r.stress is not None], True, True, 0.5,
                             {}, "")
    return assemble(model_info("morse.pt", pot, ModelMeta()), config, [r.nve for r in runs], None,  # type: ignore[arg-type]
                    Timing(total_s=1.0, md_s=0.5), {Stage.STRESS: stress})


def test_plots_drawn_in_workers_are_the_plots_drawn_here(result, tmp_path: Path) -> None:
    serial = write_report(result.model_copy(deep=True), tmp_path / "serial", plot_workers=1)
    parallel = write_report(result.model_copy(deep=True), tmp_path / "parallel", plot_workers=2)
    pngs = sorted(k for k in serial if k.endswith(".png"))
    assert len(pngs) == 8 and sorted(k for k in parallel if k.endswith(".png")) == pngs
    for rel in pngs:
        assert parallel[rel].read_bytes() == serial[rel].read_bytes(), rel
    assert parallel["report.md"].read_text() == serial["report.md"].read_text()


def _touch(path: Path) -> None:
    path.write_text("drawn")


def _die_in_a_worker(parent: int, path: Path) -> None:
    if os.getpid() != parent:
        os._exit(3)  # a worker killed mid-plot (out of memory, a signal)
    _touch(path)


def _raise(path: Path) -> None:
    raise ValueError(f"cannot plot {path.name}")


def test_what_a_dead_worker_did_not_draw_is_drawn_here(tmp_path: Path) -> None:
    jobs = [(_die_in_a_worker if k == 2 else _touch, ((os.getpid(), tmp_path / f"{k}.png") if k == 2
                                                      else (tmp_path / f"{k}.png",))) for k in range(6)]
    assert plots.render_all(jobs, workers=2) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{k}.png" for k in range(6)]


def test_a_plot_that_raises_is_not_swallowed(tmp_path: Path) -> None:
    jobs = [(_touch, (tmp_path / f"{k}.png",)) for k in range(5)] + [(_raise, (tmp_path / "bad.png",))]
    with pytest.raises(ValueError, match=r"cannot plot bad\.png"):
        plots.render_all(jobs, workers=2)


def test_few_plots_or_one_core_are_drawn_here(monkeypatch) -> None:
    assert plots.plot_workers(2) == 1
    monkeypatch.setattr(plots, "available_cores", lambda: 1)
    assert plots.plot_workers(30) == 1
    monkeypatch.setattr(plots, "available_cores", lambda: 4)
    assert plots.plot_workers(30) == 4 and plots.plot_workers(7) == 2
