"""The ``pes`` stage: the energy landscape against the oracle, before any MD.

Forces on equilibrium frames are dominated by stiff bond stretches; the soft degrees of freedom
that decide conformer populations, barriers and spectra barely move a force R². This stage
measures them directly (:mod:`mdgate.pes`):

* **conformers**: ETKDG embeddings of each molecule (from its ``smiles``, else bonds perceived
  from the geometry) relaxed by the oracle, unique minima; relative energies model vs oracle
  (max and mean error, ranking) and whether the model's own relaxation keeps each oracle minimum;
* **torsions**: each rotatable bond turned rigidly through a full circle from the lowest minimum,
  profile and barrier errors where the oracle stays within a window;
* **frequencies**: the finite-difference Hessian, mass-weighted, rigid-body motions projected
  out, each method at its own minimum (the model's relaxed from the oracle's lowest): wavenumber
  errors, and imaginary modes the oracle has not (the model's minimum is a saddle point);
* **close contacts**: every bond and every non-bonded pair closer than a few Å pulled together
  down to ~0.5 Å: the model's energy must rise where the oracle's does.

The oracle's side does not depend on the candidate and is cached. Close contacts judge shape, not
a level of theory: they apply to a model of any level; the other checks only when the model's
declared level is the oracle's (else reported as cross-level and not deciding).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from mdgate.checks.evaluate import check, check_names, enabled
from mdgate.checks.table import Stage
from mdgate.checks.verdict import stage_result
from mdgate.config import GateConfig, OracleKind, PesSettings
from mdgate.molecules import Molecule
from mdgate.pes.measure import NonFiniteOutput, PesCurves, conformers, contacts, torsions, vibrations
from mdgate.pes.reference import reference
from mdgate.potentials import Potential
from mdgate.results import CheckResult, StageResult
from mdgate.stages.oracle import Oracle, make_oracle

#: Checks that judge shape (apply across levels of theory).
LEVEL_FREE = {"close_contact_well_meV"}


def measure_molecule(potential: Potential, mol: Molecule, oracle: Oracle, config: GateConfig) -> tuple[
        dict[str, float | None], PesCurves, dict[str, str]]:
    """Every ``pes`` figure of one molecule, the curves the report plots, and notes (where the
    worst close contact was, how the oracle's side was obtained).
    """
    st = config.pes
    t0 = time.perf_counter()
    ref = reference(mol, oracle, st)
    t_ref = time.perf_counter() - t0
    curves = PesCurves()
    figures: dict[str, float | None] = {}
    figures.update(conformers(potential, ref, st, curves))
    figures.update(torsions(potential, ref, st, curves))
    figures.update(vibrations(potential, ref, st, np.array(curves.model_minimum)))
    contact, where = contacts(potential, mol, st, oracle)
    figures.update(contact)
    figures.update({"oracle_seconds": ref.seconds if not ref.cached else 0.0, "reference_seconds": t_ref,
                    "model_seconds": time.perf_counter() - t0 - t_ref})
    notes = {"close_contact": where or ""}
    return figures, curves, notes


def run_pes_stage(potential: Potential, molecules: list[Molecule], config: GateConfig, model_level: str | None,
                  parent: Potential | None = None, parent_level: str | None = None) -> StageResult:
    """The ``pes`` stage as a stage result (checks per molecule, figures, curves for the report)."""
    st = config.pes
    t0 = time.perf_counter()
    oracle = make_oracle(config.oracle, parent, parent_level)
    cross = (config.oracle.kind != OracleKind.PARENT and bool(model_level) and bool(oracle.level_of_theory)
             and str(model_level).lower() != str(oracle.level_of_theory).lower())
    figures: dict[str, dict[str, float | None]] = {}
    checks: dict[str, list[CheckResult]] = {}
    curves: dict[str, dict] = {}
    for mol in molecules:
        try:
            figs, curve, notes = measure_molecule(potential, mol, oracle, config)
        except NonFiniteOutput as e:
            figures[mol.name] = {}
            note = f"not measured: {e}; judged by the MD stages' finite check"
            checks[mol.name] = [check(name, None, b, required=False).model_copy(update={"passed": None, "note": note})
                                for name in check_names(st.criteria) if (b := enabled(st.criteria, name)) is not None]
            continue
        figures[mol.name], curves[mol.name] = figs, asdict(curve)
        checks[mol.name] = [_check(name, figs, st, cross, notes) for name in check_names(st.criteria)
                            if enabled(st.criteria, name) is not None]
    note = f"judged by {oracle.name}"
    if cross:
        note = (f"model trained on {model_level}, oracle computes {oracle.level_of_theory}: conformer, torsion and "
                f"frequency errors are cross-level and do not decide; " + note)
    result = stage_result(Stage.PES, st.required, list(checks.values()), time.perf_counter() - t0,
                          settings=st.model_dump(mode="json", exclude={"criteria"}), per_molecule=figures,
                          by_molecule=checks, note=note, oracle=oracle.name)
    result.curves = curves
    return result


def _check(name: str, figures: dict[str, float | None], settings: PesSettings, cross: bool,
           notes: dict[str, str]) -> CheckResult:
    bound = enabled(settings.criteria, name)
    assert bound is not None  # only enabled checks are asked for
    value = figures.get(name)
    c = check(name, value, bound, required=settings.required)
    if name == "close_contact_well_meV":
        return c.model_copy(update={"note": f"worst pair {notes['close_contact']}"})
    if value is None:
        why = "one conformer" if name.startswith("conformer_") else "no rotatable bond"
        return c.model_copy(update={"passed": None, "required": False, "note": f"not measured: {why}"})
    if cross and name not in LEVEL_FREE:
        return c.model_copy(update={"passed": None, "required": False, "note": "not applicable: cross-level"})
    return c
