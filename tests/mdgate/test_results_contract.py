"""``results.json`` is a contract: a result stored before the reshape (``mdgate validate`` of the
early checkpoint, with the plot series dropped to keep the file small) still loads, decides the
same way, and renders into today's report and version description.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from mdgate.checks.verdict import decide
from mdgate.report.markdown import render_markdown
from mdgate.results import ValidationResult, Verdict, iter_checks
from registry.summary import summary_markdown

STORED = Path(__file__).resolve().parents[1] / "data" / "results_before_reshape.json.gz"


@pytest.fixture(scope="module")
def stored() -> ValidationResult:
    return ValidationResult.model_validate_json(gzip.open(STORED, "rt").read())


def test_a_stored_result_loads_and_decides_the_same(stored: ValidationResult) -> None:
    again = decide(stored)
    assert stored.verdict == again.verdict == Verdict.REJECTED
    assert again.decided_by == stored.decided_by == "stress/max_bond_deviation_A"
    assert again.failed_checks == stored.failed_checks  # every failed check, in the same order
    assert again.reason.split("; ")[0] == stored.reason.split("; ")[0]


def test_iter_checks_walks_every_stage_of_a_stored_result(stored: ValidationResult) -> None:
    stages = {pc.stage for pc in iter_checks(stored)}
    assert {"sanity", "nve", "accuracy", "stress", "oracle"} <= stages
    n_molecule_checks = sum(len(m.checks) for m in stored.molecules) + sum(
        len(m.checks) for m in stored.stages["stress"].molecules)
    assert sum(pc.molecule is not None and pc.stage in ("nve", "stress") for pc in iter_checks(stored)) \
        == n_molecule_checks


def test_a_stored_result_renders_with_every_stage_and_its_failures(stored: ValidationResult) -> None:
    md = render_markdown(stored)
    assert "| stress | Structural stability (bonds) |" in md
    description = summary_markdown(stored)
    assert "FAIL: max_bond_deviation_A" in description
    assert f"{len(stored.failures)} required check(s) failed:" in description
    assert stored.decided_by == "stress/max_bond_deviation_A"
