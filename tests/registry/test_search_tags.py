"""What consumers search on: the version's few tags and the verdict's figures (metrics of a
logged model), written with each verdict; the docs' ``search_model_versions`` and
``search_logged_models`` queries run as written against a real ``mlflow server``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from mdgate.config import GateConfig
from mdgate.results import (
    AccuracyResult,
    CheckResult,
    ModelInfo,
    MoleculeResult,
    ReplicaResult,
    StageResult,
    ValidationResult,
    Verdict,
)
from registry import Registry
from registry import figures as F
from registry import types as T
from registry.figures import figures_of, verdict_figures, verdict_params
from registry.summary import min_time_to_failure_ps
from tests.integration import MlflowOnly
from tests.registry.test_registry import plain_version

DRIFT = "drift_slope_meV_per_atom_per_ps"
SHA = GateConfig().sha256()


def molecule(name: str, drift: float | None = None, stage: str = "nve", steps: int = 60,
             failures: tuple[float | None, ...] = ()) -> MoleculeResult:
    """A molecule's result: an NVE drift check, or stress replicas failing at ``failures`` ps."""
    checks = [] if drift is None else [CheckResult(name=DRIFT, value=drift, unit="meV/atom/ps", bound=0.5,
                                                   passed=drift <= 0.5, required=True)]
    replicas = [ReplicaResult(replica=i, steps_done=steps, metrics={"time_to_failure_ps": t}, checks=[])
                for i, t in enumerate(failures)]
    return MoleculeResult(name=name, formula="C2H6O", n_atoms=9, steps_asked=steps, passed=True, summary={},
                          checks=checks, replicas=replicas, stage=stage)


def result(verdict: Verdict = Verdict.APPROVED, *, r2: float | None = 0.9731, oracle_r2: float | None = 0.95,
           drifts: tuple[float, ...] = (0.04, 0.123), failures: tuple[float | None, ...] = (None, None),
           decided_by: str | None = None, parent: str | None = "painn-teacher/3") -> ValidationResult:
    """A verdict with every figure the tags are made of (no MD run)."""
    stress = StageResult(stage="stress", ran=True, required=True,
                         settings={"timestep_fs": 0.5, "ramp_ps": 0.05, "hold_ps": 0.05},
                         molecules=[molecule("ethanol", stage="stress", steps=200, failures=failures)])
    stages = {"stress": stress}
    if oracle_r2 is not None:
        stages["oracle"] = StageResult(stage="oracle", ran=True, required=True,
                                       per_molecule={"all": {"force_r2": oracle_r2}})
    accuracy = None if r2 is None else AccuracyResult(applicable=True, reference_level_of_theory="GFN2-xTB",
                                                      model_level_of_theory="GFN2-xTB", n_frames=40, force_r2=r2)
    return ValidationResult(
        verdict=verdict, reason=f"{verdict.value} for the test",
        model=ModelInfo(source="test", n_parameters=44353, parent=parent),
        criteria={"config": {}, "sha256": SHA},
        molecules=[molecule(f"m{i}", d) for i, d in enumerate(drifts)], accuracy=accuracy,
        decided_by=decided_by, stages=stages,
    )


def test_verdict_figures_are_the_worst_values() -> None:
    figures = verdict_figures(result())
    assert figures == {
        F.FORCE_R2: 0.9731, F.ORACLE_FORCE_R2: 0.95, F.WORST_DRIFT: 0.123,
        F.MIN_TIME_TO_FAILURE: pytest.approx(0.1),  # no replica failed: the stage's 200 steps × 0.5 fs
        F.N_PARAMETERS: 44353.0,
    }
    rejected = verdict_figures(result(Verdict.REJECTED, r2=-3.25, failures=(0.0625, None, 0.03125),
                                      decided_by="stress/completion", oracle_r2=None))
    assert rejected[F.MIN_TIME_TO_FAILURE] == 0.03125 and rejected[F.FORCE_R2] == -3.25
    assert F.ORACLE_FORCE_R2 not in rejected
    assert F.FORCE_R2 not in verdict_figures(result(r2=float("nan")))  # finite figures only
    assert verdict_params(result()) == {"parent": "painn-teacher/3", "energy_unit": "eV", "position_unit": "Angstrom"}
    no_stress = result()
    no_stress.stages["stress"].ran = False
    assert min_time_to_failure_ps(no_stress) is None and F.MIN_TIME_TO_FAILURE not in verdict_figures(no_stress)


def publish(registry: Registry, name: str, version: str, res: ValidationResult, report: Path,
            force: bool = False) -> None:
    claim = registry.claim(name, version, lease_s=600, flow_run="fr", force=force).claim
    assert claim is not None
    registry.publish(claim, res, report, SHA)


@pytest.mark.integration
def test_readme_queries_on_published_verdicts(mlflow_only: MlflowOnly, tmp_path: Path) -> None:
    registry = Registry(mlflow_only.tracking_uri)
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# report\n")
    name = "painn-student"
    v_ok, v_stress, v_acc, v_old = (plain_version(registry, name, {"model.pt": b"never loaded"}) for _ in range(4))
    publish(registry, name, v_ok, result(r2=0.9931, drifts=(0.02, 0.031)), report)
    publish(registry, name, v_stress, result(Verdict.REJECTED, failures=(0.0425,),
                                             decided_by="stress/max_bond_deviation_A"), report)
    publish(registry, name, v_acc, result(Verdict.REJECTED, r2=0.41, decided_by="accuracy/min_force_r2"), report)
    # an Approved version under other criteria
    claim = registry.claim(name, v_old, lease_s=600).claim
    registry.publish(claim, result(), report, "0" * 64)

    client = MlflowClient(mlflow_only.tracking_uri)
    sha = SHA

    def versions(query: str) -> list[str]:
        return sorted(mv.version for mv in client.search_model_versions(query))

    # The version tags: a handful, what a person reads in the versions list.
    for v in (v_ok, v_stress, v_acc, v_old):
        own = {k for k in registry.get_version(name, v).tags if k.startswith("mdgate.")}
        assert own <= {T.STATUS, T.REASON, T.DECIDED_BY, T.CRITERIA_SHA256, T.REPORT, T.FLOW_RUN, T.CLAIM,
                       T.UPDATED_AT}, own
    # The queries of docs/search.md, as written there: status and decision on the version...
    assert versions(f"name='painn-student' AND tags.`mdgate.status` = 'Approved' "
                    f"AND tags.`mdgate.criteria_sha256` = '{sha}'") == [v_ok]
    assert versions("name='painn-student' AND tags.`mdgate.decided_by` LIKE 'stress/%'") == [v_stress]
    assert versions("name='painn-student' AND tags.`mdgate.status` = 'Rejected'") == sorted([v_stress, v_acc])
    assert versions("name LIKE 'painn-%' AND tags.`mdgate.decided_by` != ''") == sorted([v_stress, v_acc])
    # ...and the figures, by value, on the verdicts' logged models in the experiment "mdgate".
    exp = client.get_experiment_by_name("mdgate").experiment_id

    def found(query: str) -> list[str]:
        # (other tests publish into the same server: their models are left out)
        return sorted(m.tags["mdgate.version"] for m in client.search_logged_models([exp], filter_string=query)
                      if m.tags["mdgate.model"] == name)

    assert found("tags.`mdgate.model` = 'painn-student' AND metrics.force_r2 >= 0.99") == [v_ok]
    assert found("metrics.worst_drift_meV_per_atom_per_ps < 0.1 AND metrics.min_time_to_failure_ps >= 0.1") \
        == [v_ok]
    assert found("params.parent = 'painn-teacher/3' AND tags.`mdgate.verdict` = 'Approved'") == sorted([v_ok, v_old])
    assert found(f"tags.`mdgate.criteria_sha256` = '{sha}' AND metrics.force_r2 < 0.5") == [v_acc]
    # From a logged model to the version's current status.
    [best] = client.search_logged_models([exp], filter_string=f"tags.`mdgate.model` = '{name}' "
                                                              "AND metrics.force_r2 >= 0.99")
    mv = client.get_model_version(best.tags["mdgate.model"], best.tags["mdgate.version"])
    assert mv.tags["mdgate.status"] == "Approved" and best.source_run_id == mv.tags["mdgate.report"].split("/")[1]
    ttf = {m.tags["mdgate.version"]: figures_of(m)["min_time_to_failure_ps"]
           for m in client.search_logged_models([exp], filter_string=f"tags.`mdgate.model` = '{name}'")}
    assert ttf[v_stress] == pytest.approx(0.0425) and ttf[v_ok] == pytest.approx(0.1)
    # The same through mdgate: the versions whose figures match, with their status.
    assert [v.version for v in registry.versions_where(name, "metrics.force_r2 >= 0.99")] == [v_ok]
    env = {"MDGATE_TRACKING_URI": mlflow_only.tracking_uri}
    out = CliRunner().invoke(app, ["status", name, "--where", "metrics.force_r2 >= 0.99", "--json"], env=env)
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.output)
    assert row["version"] == v_ok and row["status"] == "Approved"
    assert row["figures"]["force_r2"] == pytest.approx(0.9931)
    out = CliRunner().invoke(app, ["status", name, "--where", "metrics.force_r2 >>> 1"], env=env)
    assert out.exit_code != 0 and "force_r2" in out.output  # a malformed filter is a clear error

    # A re-gate leaves no figure of the earlier verdict behind.
    publish(registry, name, v_stress, result(r2=None, oracle_r2=None), report, force=True)
    tags = registry.get_version(name, v_stress).tags
    assert T.DECIDED_BY not in tags and tags[T.STATUS] == "Approved"
    [again] = client.search_logged_models(
        [exp], filter_string=f"tags.`mdgate.model` = '{name}' AND tags.`mdgate.version` = '{v_stress}'")
    assert "force_r2" not in figures_of(again) and figures_of(again)["min_time_to_failure_ps"] == pytest.approx(0.1)
    assert versions("name='painn-student' AND tags.`mdgate.decided_by` LIKE 'stress/%'") == []
    # A person's decision is on the version; the verdict's logged model keeps the gate's.
    registry.review(name, v_acc, approve=True, reason="R² judged on the wrong set", by="alice")
    assert versions("name='painn-student' AND tags.`mdgate.decided_by` LIKE 'review/%'") == [v_acc]
    assert found(f"tags.`mdgate.version` = '{v_acc}' AND tags.`mdgate.verdict` = 'Rejected'") == [v_acc]


def test_a_version_gated_before_loses_its_figure_tags(mlflow_only: MlflowOnly, tmp_path: Path) -> None:
    registry = Registry(mlflow_only.tracking_uri)
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# report\n")
    version = plain_version(registry, "painn-old", {"model.pt": b"never loaded"})
    old = {"mdgate.force_r2": "0.9000", "mdgate.worst_drift_meV_per_atom_per_ps": "0.2000",
           "mdgate.validation_run": "abc", "mdgate.decision": "automatic", "mdgate.parent": "painn-teacher/3"}
    registry.set_tags("painn-old", version, old)
    publish(registry, "painn-old", version, result(), report)
    tags = registry.get_version("painn-old", version).tags
    assert not {"mdgate.force_r2", "mdgate.worst_drift_meV_per_atom_per_ps", "mdgate.validation_run",
                "mdgate.decision"} & set(tags)
    assert tags["mdgate.parent"] == "painn-teacher/3"  # metadata a person set is theirs
    assert registry.get_version("painn-old", version).validation_run == tags[T.REPORT].split("/")[1]
