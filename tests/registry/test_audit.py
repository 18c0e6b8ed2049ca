"""Review, audit trail and rollback against a real ``mlflow server`` (no MD, no Prefect):
``mdgate review`` overrules an automatic verdict, ``mdgate history`` lists every decision and
alias move in order, ``mdgate rollback`` moves ``approved`` back, and the history cannot be
rewritten.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from flows.cli import app
from mdgate.config import GateConfig
from mdgate.report.markdown import write_report
from mdgate.results import ModelInfo, Timing, Verdict
from mdgate.runner import assemble
from registry import Registry, Status
from registry import types as T
from registry.audit import AUDIT_EXPERIMENT
from tests.integration import MlflowOnly
from tests.registry.test_registry import plain_version

pytestmark = pytest.mark.integration


def gate_result(registry: Registry, name: str, version: str, verdict: Verdict, report: Path) -> None:
    """Publish an automatic verdict (no MD) through a claim, as the gate flow does."""
    result = assemble(ModelInfo(source=f"{name}/{version}"), GateConfig(), [], None, Timing())
    if verdict != Verdict.APPROVED:
        result = result.model_copy(update={"verdict": verdict, "reason": "min_force_r2 = 0.41 (bound >= 0.9)"})
    write_report(result, report)
    claim = registry.claim(name, version, 600, flow_run=None, force=True).claim
    assert claim is not None
    registry.publish(claim, result, report, "sha-test")


def cli(tracking_uri: str, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args), env={"MDGATE_TRACKING_URI": tracking_uri, "USER": "carol"},
                             catch_exceptions=False)
    return res.exit_code, res.output


def test_review_history_and_rollback(mlflow_only: MlflowOnly, tmp_path: Path) -> None:
    uri = mlflow_only.tracking_uri
    registry = Registry(uri)
    name = f"audit-{uuid.uuid4().hex[:8]}"
    v1, v2, v3 = (plain_version(registry, name, {"m.txt": b"x"}) for _ in range(3))
    gate_result(registry, name, v1, Verdict.APPROVED, tmp_path / "1")
    gate_result(registry, name, v2, Verdict.APPROVED, tmp_path / "2")
    gate_result(registry, name, v3, Verdict.REJECTED, tmp_path / "3")
    assert registry.alias_version(name) == v2

    # (c) a person overrules the automatic rejection, with a reason
    code, out = cli(uri, "review", name, v3, "--approve", "--reason", "drift is an artefact of 60 steps",
                    "--by", "bob")
    assert code == 0, out
    info = registry.get_version(name, v3)
    assert info.status == Status.APPROVED and info.tags[T.DECIDED_BY] == "review/bob"
    assert "drift is an artefact" in info.reason
    assert registry.alias_version(name) == v3
    code, out = cli(uri, "review", name, v3, "--approve")
    assert code == 2 and "--reason" in out

    # (e) rollback: approved goes back to v2, v3 is Rejected by the one who rolled back
    code, out = cli(uri, "rollback", name, "--reason", "regression seen in production")
    assert code == 0, out
    assert registry.alias_version(name) == v2
    rolled = registry.get_version(name, v3)
    assert rolled.status == Status.REJECTED and rolled.tags[T.DECIDED_BY] == "review/carol"

    # (d) the history: every decision and alias move, in order
    code, out = cli(uri, "history", name, "--json")
    assert code == 0, out
    events = [(e["version"], e["kind"], e["status"], e["decided_by"], e["alias_from"], e["alias_to"])
              for e in json.loads(out)]
    assert events == [
        (v1, "verdict", "Approved", "mdgate", "", ""),
        (v1, "alias", "", "mdgate", "", v1),
        (v2, "verdict", "Approved", "mdgate", "", ""),
        (v2, "alias", "", "mdgate", v1, v2),
        (v3, "verdict", "Rejected", "mdgate", "", ""),
        (v3, "review", "Approved", "bob", "", ""),
        (v3, "alias", "", "bob", v2, v3),
        (v3, "rollback", "Rejected", "carol", "", ""),
        (v2, "alias", "", "carol", v3, v2),
    ]
    code, out = cli(uri, "history", name)
    assert code == 0 and "rollback" in out and "audit trail" in out

    # a forced gate of a version that had an outcome is a re-gate, in the history too
    assert registry.claim(name, v1, 600, flow_run=None, force=True).claim is not None
    last = registry.history(name)[-1]
    assert (last.version, last.kind.value, last.status) == (v1, "regate", "Running")
    assert last.reason.startswith("gated again (was Approved")

    # the next decision cannot rewrite an event: params of an audit run are immutable
    client = MlflowClient(uri)
    first = registry.history(name)[0]
    with pytest.raises(MlflowException):
        client.log_param(first.run_id, "status", "Rejected")
    assert client.get_experiment_by_name(AUDIT_EXPERIMENT) is not None
