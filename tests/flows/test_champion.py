"""Champion comparison end to end on real MLflow and Prefect servers, when the champion's stored
figures cannot be used: the champion was judged under other criteria, so the gate runs it itself
on the candidate's molecules and seeds under the current criteria, and a much worse candidate is
still Rejected, naming the champion and saying its figures were re-measured; the report shows
candidate and champion side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from registry import Registry, Status
from registry import types as T
from registry.register import register_potential
from tests.integration import REPO_ROOT, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODELS = REPO_ROOT / "examples" / "models"
RULE = json.dumps({"min_force_r2": {"max_absolute_change": 0.005}})


def gate(stack: Stack, cwd: Path, name: str, version: str, **env: str) -> subprocess.CompletedProcess:
    """``mdgate gate NAME VERSION --server`` against the session's servers, with more settings."""
    full = {**os.environ, **stack.env, **env, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(cwd / "prefect-home")}
    return subprocess.run([str(Path(sys.executable).parent / "mdgate"), "gate", name, version, "--server"],
                          env=full, capture_output=True, text=True, timeout=1200, cwd=cwd)


@pytest.mark.skipif(not (MODELS / "teacher.pt").is_file() or not (MODELS / "student_20x.pt").is_file(),
                    reason="examples/models/teacher.pt and student_20x.pt are not trained here")
def test_champion_judged_under_other_criteria_is_re_measured(stack: Stack, registry: Registry, small_set,
                                                             tmp_path: Path) -> None:
    # The champion (the demo's teacher, force R² 0.998) is judged under older criteria (another
    # force R² bound, so another sha256); the candidate (its 20x student, R² 0.991) under the
    # session's. Both pass every absolute bound; the rule allows 0.005 below the champion.
    older = yaml.safe_load(stack.config.read_text())
    older["criteria"]["min_force_r2"]["bound"] = 0.85
    older_config = tmp_path / "older.yaml"
    older_config.write_text(yaml.safe_dump(older))
    name = f"champion-stale-{uuid.uuid4().hex[:6]}"
    meta = {"level_of_theory": "GFN2-xTB"}
    champion = register_potential(registry, MODELS / "teacher.pt", name, meta=meta,
                                  reference=small_set.reference).version
    first = gate(stack, tmp_path, name, champion, MDGATE_CHAMPION=RULE, MDGATE_CONFIG=str(older_config))
    assert first.returncode == 0, first.stdout + first.stderr
    old = registry.get_version(name, champion)
    assert old.status == Status.APPROVED and registry.alias_version(name) == champion
    candidate = register_potential(registry, MODELS / "student_20x.pt", name, meta=meta,
                                   reference=small_set.reference).version
    second = gate(stack, tmp_path, name, candidate, MDGATE_CHAMPION=RULE)
    assert second.returncode == 1, second.stdout + second.stderr
    info = registry.get_version(name, candidate)
    assert info.criteria_sha256 != old.criteria_sha256
    assert info.status == Status.REJECTED and info.tags[T.DECIDED_BY] == "champion/min_force_r2"
    assert info.reason.startswith(f"worse than the champion v{champion}: accuracy: min_force_r2 = "), info.reason
    assert info.reason.endswith("(champion's figures re-measured by this gate under the current criteria, "
                                "its own were judged under other criteria)"), info.reason
    assert registry.alias_version(name) == champion
    # The report shows both side by side, with the champion's re-measured result beside it.
    client = registry.client
    report = Path(client.download_artifacts(info.validation_run, "report.md", str(tmp_path / "report"))).read_text()
    assert "## Comparison with the champion" in report
    assert f"**Baseline**: champion v{champion}; its figures were re-measured by this gate" in report
    assert f"| Check | Place | Candidate | Baseline (v{champion}) | Allowed | Worse? |" in report
    row = next(line for line in report.splitlines() if line.startswith("| min_force_r2 | accuracy |"))
    assert row.endswith("| **WORSE** |"), row
    plots = [line for line in report.splitlines() if line.startswith("![Energy drift of ") and "vs champion" in line]
    assert len(plots) == len(small_set.names), report
    stored = {a.path for a in client.list_artifacts(info.validation_run, "plots")}
    assert {p.split("(")[1].rstrip(")") for p in plots} <= stored
    measured = json.loads(Path(client.download_artifacts(info.validation_run, "baseline_results.json",
                                                         str(tmp_path / "baseline"))).read_text())
    assert measured["criteria"]["sha256"] == info.criteria_sha256 and measured["verdict"] == "Approved"
    assert measured["model"]["source"] == f"{name} v{champion}"
