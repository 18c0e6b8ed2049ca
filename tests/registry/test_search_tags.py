"""The tags consumers search on: written with each verdict, and the docs'
``search_model_versions`` queries run as written against a real ``mlflow server``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

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
from registry import types as T
from registry.summary import decimal, min_time_to_failure_ps, verdict_tags
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


def test_verdict_tags_are_plain_decimals() -> None:
    tags = verdict_tags(result())
    assert tags == {
        T.FORCE_R2: "0.9731", T.ORACLE_FORCE_R2: "0.9500", T.WORST_DRIFT: "0.1230",
        T.MIN_TIME_TO_FAILURE: "0.1000",  # no replica failed: the stage's 200 steps × 0.5 fs
        T.DECIDED_BY: None, T.N_PARAMETERS: "44353", T.PARENT: "painn-teacher/3",
    }
    rejected = verdict_tags(result(Verdict.REJECTED, r2=-3.25, failures=(0.0625, None, 0.03125),
                                   decided_by="stress/completion", oracle_r2=None))
    assert rejected[T.MIN_TIME_TO_FAILURE] == "0.0312" and rejected[T.DECIDED_BY] == "stress/completion"
    assert rejected[T.FORCE_R2] == "-3.2500" and rejected[T.ORACLE_FORCE_R2] is None
    assert decimal(-1e-9) == "0.0000" and decimal(float("nan")) is None and decimal(1234567.0) == "1234567.0000"
    assert decimal(2.5e-5) == "0.0000" and "e" not in decimal(1e22)
    no_stress = result()
    no_stress.stages["stress"].ran = False
    assert min_time_to_failure_ps(no_stress) is None


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

    # The queries of docs/search.md, as written there.
    assert versions(f"name='painn-student' AND tags.`mdgate.status` = 'Approved' "
                    f"AND tags.`mdgate.criteria_sha256` = '{sha}'") == [v_ok]
    assert versions("name='painn-student' AND tags.`mdgate.decided_by` LIKE 'stress/%'") == [v_stress]
    assert versions("name='painn-student' AND tags.`mdgate.status` = 'Rejected'") == sorted([v_stress, v_acc])
    assert versions("tags.`mdgate.parent` = 'painn-teacher/3' AND tags.`mdgate.status` = 'Approved'") \
        == sorted([v_ok, v_old])
    assert versions("name='painn-student' AND tags.`mdgate.force_r2` LIKE '0.99%'") == [v_ok]
    assert versions("name='painn-student' AND tags.`mdgate.worst_drift_meV_per_atom_per_ps` LIKE '0.0%'") == [v_ok]
    assert versions("name LIKE 'painn-%' AND tags.`mdgate.decided_by` != ''") == sorted([v_stress, v_acc])
    approved = client.search_model_versions("name='painn-student' AND tags.`mdgate.status` = 'Approved'")
    good = [mv.version for mv in approved if float(mv.tags.get("mdgate.force_r2", "nan")) >= 0.99]
    assert good == [v_ok]
    ttf = {mv.version: mv.tags["mdgate.min_time_to_failure_ps"]
           for mv in client.search_model_versions("name='painn-student'")}
    assert ttf[v_stress] == "0.0425" and ttf[v_ok] == "0.1000"
    # What MLflow's grammar refuses on tags: ordering comparisons, OR, IN.
    for query in ("tags.`mdgate.force_r2` >= '0.99'", "tags.`mdgate.force_r2` > 0.99",
                  "tags.`mdgate.status` = 'Approved' OR tags.`mdgate.status` = 'Rejected'",
                  "tags.`mdgate.status` IN ('Approved', 'Rejected')"):
        with pytest.raises(MlflowException):
            client.search_model_versions(query)

    # A re-gate leaves no figure of the earlier verdict behind.
    publish(registry, name, v_stress, result(r2=None, oracle_r2=None), report, force=True)
    tags = registry.get_version(name, v_stress).tags
    assert T.DECIDED_BY not in tags and T.FORCE_R2 not in tags and T.ORACLE_FORCE_R2 not in tags
    assert tags[T.STATUS] == "Approved" and tags[T.MIN_TIME_TO_FAILURE] == "0.1000"
    assert tags[T.N_PARAMETERS] == "44353" and tags[T.PARENT] == "painn-teacher/3"  # unchanged: kept
    assert versions("name='painn-student' AND tags.`mdgate.decided_by` LIKE 'stress/%'") == []

