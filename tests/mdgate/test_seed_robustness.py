"""Verdicts that hold across seeds (slow): the default protocol on the packaged molecules, only the
MD and stress seeds changed.

- ``painn_hot`` (the packaged recipe on GFN2-xTB data from 500 K and 1000 K MD) is Approved
  under each of ten seeds;
- the hole model (``painn_small`` with an H–H well below 1.49 Å) and ``painn_cold`` (the recipe on
  100 K data only) are Rejected under each of five seeds, by the heat-stress stage.

Each seed is its own test case, so the cases can run in several processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mdgate.config import GateConfig
from mdgate.potentials import ModelMeta
from mdgate.potentials.schnetpack import load_module
from mdgate.results import ValidationResult, Verdict
from mdgate.runner import validate
from tests.mdgate.test_protocol import HOLE
from tests.models import MODEL_META, HoleModel, save_model

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"


def _validate(model: Path, seed: int, meta: ModelMeta | None = None) -> ValidationResult:
    config = GateConfig.model_validate({"md": {"seed": seed}, "stress": {"seed": seed}})
    result = validate(model, config, meta)
    stress = result.stages["stress"]
    rates = [f"{m.name} {m.rate.n_failed}/{m.rate.n_trajectories}" for m in stress.molecules
             if m.rate is not None and m.rate.n_failed]
    print(f"{model.stem} seed {seed}: {result.verdict.value} ({result.timing.total_s:.0f} s); "
          f"stress failures {rates or 'none'}; {result.reason}")
    return result


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 11))
def test_a_model_trained_on_hot_data_is_approved_under_every_seed(seed: int) -> None:
    result = _validate(MODELS / "painn_hot.pt", seed)
    assert result.verdict == Verdict.APPROVED, result.reason


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
def test_a_model_trained_on_cold_data_only_is_rejected_under_every_seed(seed: int) -> None:
    result = _validate(MODELS / "painn_cold.pt", seed)
    assert result.verdict == Verdict.REJECTED, result.reason
    assert result.decided_by is not None and result.decided_by.startswith("stress/"), result.reason


@pytest.fixture(scope="module")
def hole_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hole")
    return save_model(HoleModel(load_module(MODELS / "painn_small.pt"), **HOLE), folder / "hole.pt", MODEL_META)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
def test_a_model_with_a_hole_is_rejected_under_every_seed(seed: int, hole_model: Path) -> None:
    result = _validate(hole_model, seed, ModelMeta(**MODEL_META))
    assert result.verdict == Verdict.REJECTED, result.reason
    assert result.decided_by is not None and result.decided_by.startswith("stress/"), result.reason
