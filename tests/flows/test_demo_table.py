"""The demo's study table and live progress lines, without servers: the table from
``results.json``-shaped dicts (built with the contract's own models, dumped to JSON and read
back), rendered in 100 columns; the progress line and board from Prefect-shaped task runs.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from flows.demo_progress import Board, GateView, progress_line, summarize_tasks
from flows.demo_table import Row, render_study, study_table
from mdgate.results import (
    AccuracyResult,
    CheckResult,
    FailedCheck,
    FailureInfo,
    ModelInfo,
    MoleculeResult,
    ReplicaResult,
    StageResult,
    ValidationResult,
    Verdict,
)
from registry.types import Status, VersionInfo

DRIFT = "drift_slope_meV_per_atom_per_ps"


def _check(name: str, value: float, bound: float, passed: bool, unit: str = "") -> CheckResult:
    return CheckResult(name=name, value=value, unit=unit, bound=bound, passed=passed, required=True)


def _molecule(name: str, drift: float, failure: FailureInfo | None = None, stage: str = "nve") -> MoleculeResult:
    metrics = {"time_to_failure_ps": failure.time_ps if failure else None}
    replica = ReplicaResult(replica=0, steps_done=4000 if failure is None else failure.step, failure=failure,
                            metrics=metrics, checks=[])
    return MoleculeResult(name=name, formula="C2H6O", n_atoms=9, steps_asked=4000, passed=failure is None,
                          summary={DRIFT: drift}, checks=[_check(DRIFT, drift, 0.5, abs(drift) <= 0.5)],
                          replicas=[replica], stage=stage)


def _result(verdict: Verdict, n_params: int, *, drift: float | None = 0.012, ttf: float | None = None,
            oracle_r2: float | None = 0.981, ref_r2: float = 0.9958, sanity_failed: bool = False) -> dict:
    failures, stages = [], {}
    if sanity_failed:
        failures.append(FailedCheck(stage="sanity", where="malonaldehyde", check="fd_force_error_relative",
                                    value=0.83, unit="", bound=0.005, comparison="<="))
        stages["sanity"] = StageResult(stage="sanity", ran=True, required=True, passed=False)
        stages["stress"] = StageResult(stage="stress", ran=False, required=True, note="skipped")
        stages["oracle"] = StageResult(stage="oracle", ran=False, required=True)
    else:
        failure = None
        if ttf is not None:
            failure = FailureInfo(check="max_temperature_excess_K", step=int(ttf * 2000), time_ps=ttf,
                                  value=12000.0, temperature_K=1255.0, target_temperature_K=1100.0)
            failures.append(FailedCheck(stage="stress", where="ethanol", check="max_temperature_excess_K",
                                        value=12000.0, unit="K", bound=10000.0, comparison="<=",
                                        time_ps=ttf, temperature_K=1255.0))
        stages["stress"] = StageResult(stage="stress", ran=True, required=True, passed=failure is None,
                                       settings={"timestep_fs": 0.5},
                                       molecules=[_molecule("ethanol", 0.0, failure, "stress"),
                                                  _molecule("aspirin", 0.0, None, "stress")])
        stages["oracle"] = StageResult(stage="oracle", ran=True, required=True,
                                       per_molecule={"all": {"force_r2": oracle_r2, "n_frames": 60.0}})
    molecules = [] if sanity_failed or drift is None else [_molecule("ethanol", drift), _molecule("aspirin", -0.3)]
    result = ValidationResult(
        verdict=verdict, reason="…", model=ModelInfo(source="painn-md17 v1", n_parameters=n_params),
        criteria={"sha256": "x"}, molecules=molecules,
        accuracy=AccuracyResult(applicable=True, reference_level_of_theory="GFN2-xTB",
                                model_level_of_theory="GFN2-xTB", n_frames=500, force_r2=ref_r2),
        failed_checks=[f.line() for f in failures], failures=failures,
        decided_by=f"{failures[0].stage}/{failures[0].check}" if failures else None, stages=stages)
    return json.loads(json.dumps(result.model_dump(mode="json")))  # as results.json is read back


def _row(version: str, stem: str, status: Status, results: dict) -> Row:
    return Row(stem, VersionInfo(name="painn-md17", version=version, status=status), results)


def test_study_table_fits_100_columns_with_every_figure_from_the_results() -> None:
    rows = [
        _row("1", "teacher", Status.APPROVED, _result(Verdict.APPROVED, 589_057)),
        _row("2", "student_2x", Status.REJECTED, _result(Verdict.REJECTED, 293_255, ttf=1.77)),
        _row("5", "student_5x_direct", Status.REJECTED,
             _result(Verdict.REJECTED, 130_032, ref_r2=0.9931, sanity_failed=True)),
        _row("16", "student_20x_epoch1", Status.PENDING_REVIEW, _result(Verdict.APPROVED, 29_140, ttf=0.42)),
    ]
    table = study_table(rows)
    text = render_study(table)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100, "\n".join(line for line in lines if len(line) > 100)
    by_model = {row["model"]: row for row in table}
    assert by_model["teacher"]["stress"] == "2/2" and by_model["teacher"]["deciding check"] == ""
    assert by_model["teacher"]["force R²"] == "0.996/0.981"
    assert by_model["teacher"]["NVE drift"] == "0.300"  # the largest |slope| over the molecules
    assert by_model["student_2x"]["stress"] == "1/2, 1.77"
    assert by_model["student_2x"]["deciding check"] == "stress/max_temperature_excess_K"
    direct = by_model["student_5x_direct"]
    assert (direct["stress"], direct["force R²"], direct["NVE drift"]) == ("n/a", "0.993/n/a", "n/a")
    assert direct["deciding check"] == "sanity/fd_force_error_relative"
    assert "fd_force_error_relative = 0.83" in direct["why"]
    # the table's rows, the version and model on each, and the deciding failure under the table
    assert any(line.startswith("v16 student_20x_epoch1") and "PendingReview" in line for line in lines)
    assert any(line.startswith("v5 student_5x_direct Rejected: sanity/malonaldehyde") for line in lines)
    assert any("1.770 ps, 1255 K" in line for line in lines)
    assert "1/2, 1.77" in text and "589,057" in text and "0.993/n/a" in text
    assert any(line.startswith("v5 student_5x_direct") and line.endswith("sanity/fd_force_error") for line in lines)


def test_study_table_cuts_the_deciding_check_rather_than_overflowing() -> None:
    results = _result(Verdict.REJECTED, 29_140, ttf=0.5)
    results["decided_by"] = "stress/" + "a_very_long_check_name_from_a_future_stage" * 2
    text = render_study(study_table([_row("123", "student_with_a_long_file_stem", Status.REJECTED, results)]))
    assert max(map(len, text.splitlines())) <= 100
    assert "…" in text


def test_progress_line_from_task_runs_and_the_progress_artifact() -> None:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)

    def run(name: str, state: str, minute: int) -> SimpleNamespace:
        return SimpleNamespace(name=name, state_type=state, start_time=t0 + timedelta(minutes=minute))

    tasks = [run("claim-3e3", "COMPLETED", 0), run("load-dad", "COMPLETED", 1), run("sanity-7c3", "COMPLETED", 2),
             run("md-ethanol", "COMPLETED", 3), run("md-aspirin", "RUNNING", 4), run("md-uracil", "RUNNING", 5)]
    stage, done = summarize_tasks(tasks)
    assert (stage, done) == ("md", 1)
    assert summarize_tasks(tasks[:3]) == ("sanity", 0)
    lanes = [run("md-caffeine+ethanol+uracil", "COMPLETED", 3), run("md-aspirin+toluene", "RUNNING", 3)]
    assert summarize_tasks(lanes) == ("md", 3)  # a completed lane counts each of its molecules
    assert summarize_tasks([run("publish-error-0b1", "RUNNING", 9)]) == ("publish-error", 0)
    view = GateView(state="Running", stage=stage, molecules_done=done, molecules_total=10, md_percent=43.0,
                    elapsed_s=151)
    line = progress_line("v3 student_5x", "Running", view, steps_per_molecule=4000)
    assert "md" in line and "molecules 1/10" in line and "MD  43% (17,200/40,000 steps)" in line
    assert line.endswith("2:31") and len(line) <= 100
    # a run waiting for a gate's place: Queued, although its trigger has claimed the version
    for state in ("Scheduled", "Late"):
        line = progress_line("v5 student_5x_direct", "Running", GateView(state=state), steps_per_molecule=4000)
        assert line.split() == ["v5", "student_5x_direct", "Queued"]
    line = progress_line("v5 student_5x_direct", "Running", GateView(state="Pending"), steps_per_molecule=4000)
    assert line.split() == ["v5", "student_5x_direct", "Running", "Pending"]


def test_board_redraws_in_place_on_a_terminal_and_appends_changes_otherwise() -> None:
    out = io.StringIO()
    board = Board(out, live=True)
    board.update({"a": ("Running md", "v1 a  Running  md"), "b": ("waiting ", "v2 b  waiting")})
    board.update({"a": ("Running md", "v1 a  Running  md  MD 10%"), "b": ("waiting ", "v2 b  waiting")})
    assert out.getvalue().count("\x1b[2F") == 1  # the second frame moves up over the first
    now = [0.0]
    out = io.StringIO()
    board = Board(out, live=False, every_s=60.0, clock=lambda: now[0])
    board.update({"a": ("Running md", "v1 a MD 10%")})
    now[0] = 10.0
    board.update({"a": ("Running md", "v1 a MD 20%")})  # too soon: not written
    now[0] = 20.0
    board.update({"a": ("Approved ", "v1 a Approved")})  # a status change always is
    now[0] = 25.0
    board.update({"a": ("Approved ", "v1 a Approved")})  # unchanged: not written
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 3)[-1] for line in lines] == ["v1 a MD 10%", "v1 a Approved"]
    assert "\x1b" not in out.getvalue()
