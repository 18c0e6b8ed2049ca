"""Adding a check is a row in the table plus the function that measures it (docs: contributing).

A plugin adds a live check before the config is built, exactly as the contributing guide shows,
and the check then stops MD, decides the verdict, appears in the report and in the registry tags,
with no other file touched. It runs in a fresh interpreter: the config models are built from the
table when ``mdgate.config`` is first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PLUGIN = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    # --- the two additions of the contributing guide: a row, and the function that measures it
    from mdgate.checks.table import CheckSpec, Stage, add_check

    add_check(CheckSpec("max_dummy_temperature_hK", "hK", "Dummy: temperature in hectokelvin",
                        "the dummy check's bound was crossed", stops_md=True, column="dummy T (hK)",
                        figure="max_dummy_temperature_hK"),
              {Stage.NVE: (float(sys.argv[1]), True)})

    from mdgate.md.observers import Observation, observer

    @observer("max_dummy_temperature_hK")
    def _dummy(o: Observation):
        return o.temperature_K / 100.0
    # ---

    from mdgate.config import GateConfig
    from mdgate.md.trajectory import StopLimits
    from mdgate.molecules import Molecule
    from mdgate.potentials import ModelMeta
    from mdgate.report.markdown import render_markdown
    from mdgate.results import Timing
    from mdgate.runner import assemble, model_info
    from mdgate.stages.md import md_limits, run_md
    from registry.figures import verdict_figures
    from registry.summary import summary_markdown
    from tests.models import MorsePairPotential, quick, tetrahedron

    config = GateConfig.model_validate(quick({"md": {"n_steps": 100, "record_every": 5}}))
    mols = [Molecule("tetra_c", tetrahedron("C4", rattle_A=0.01, seed=1))]
    pot = MorsePairPotential()
    runs = run_md(pot, mols, config)
    molecules = [r.nve for r in runs]
    result = assemble(model_info("morse.pt", pot, ModelMeta()), config, molecules, None, Timing(total_s=1.0))
    print(json.dumps({
        "limit": md_limits(config).get("max_dummy_temperature_hK"),
        "failure": [r.failure.check if r.failure else None for m in molecules for r in m.replicas],
        "steps_done": [r.steps_done for m in molecules for r in m.replicas],
        "verdict": result.verdict.value, "decided_by": result.decided_by, "reason": result.reason,
        "in_report": "Dummy: temperature in hectokelvin" in render_markdown(result),
        "in_description": "dummy T (hK)" in summary_markdown(result),
        "figure": verdict_figures(result).get("max_dummy_temperature_hK"),
    }))
''')


def _run_with_dummy_check(bound_hK: float, tmp_path: Path) -> dict:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, str(script), str(bound_hK)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("bound_hK", [1.0])
def test_a_new_check_stops_md_decides_and_is_reported_and_tagged(bound_hK: float, tmp_path: Path) -> None:
    """The dummy bound (100 K) is below the start temperature: MD stops at the first record."""
    seen = _run_with_dummy_check(bound_hK, tmp_path)
    assert seen["limit"] == bound_hK  # a required live check is a stop limit
    assert seen["failure"] and set(seen["failure"]) == {"max_dummy_temperature_hK"}
    assert set(seen["steps_done"]) == {0}
    assert seen["verdict"] == "Rejected" and seen["decided_by"] == "nve/max_dummy_temperature_hK"
    assert "max_dummy_temperature_hK" in seen["reason"]
    assert seen["in_report"] and seen["in_description"]
    assert float(seen["figure"]) > bound_hK


def test_a_new_check_within_its_bound_passes_and_is_still_tagged(tmp_path: Path) -> None:
    seen = _run_with_dummy_check(1000.0, tmp_path)
    assert set(seen["failure"]) == {None} and seen["verdict"] == "Approved"
    assert seen["in_report"] and seen["in_description"]
    assert 0.0 < float(seen["figure"]) < 1000.0
