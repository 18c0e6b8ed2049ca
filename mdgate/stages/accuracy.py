"""The accuracy stage: the model's energies and forces on the reference set."""

from __future__ import annotations

import numpy as np

from mdgate.checks.evaluate import evaluate_accuracy
from mdgate.config import GateConfig
from mdgate.molecules import ReferenceSet
from mdgate.potentials import Potential
from mdgate.potentials.predict import predict_atoms
from mdgate.results import AccuracyResult


def run_accuracy(potential: Potential, reference: ReferenceSet, config: GateConfig,
                 model_level: str | None, batch_size: int = 32) -> AccuracyResult:
    """Predict the reference set in batches and compare with its energies and forces."""
    pred_e, pred_f = predict_atoms(potential, reference.frames, batch_size)
    return evaluate_accuracy(
        pred_e, reference.energies_eV(), pred_f, reference.forces_eV_per_A(),
        np.array([len(a) for a in reference.frames]), reference.names, config.criteria,
        reference.level_of_theory, model_level,
    )
