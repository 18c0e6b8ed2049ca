"""The verdict: stage results, failed required checks as records (in protocol order), and the
decision with its one-line reason naming the stage and check that decided.
"""

from __future__ import annotations

from collections import Counter
from itertools import groupby

from mdgate.checks.evaluate import worst_checks
from mdgate.checks.table import Stage
from mdgate.results import CheckResult, FailedCheck, MoleculeResult, StageResult, ValidationResult, Verdict, iter_checks


def stage_result(stage: Stage, required: bool, groups: list[list[CheckResult]], seconds: float,
                 by_molecule: dict[str, list[CheckResult]] | None = None, **kw: object) -> StageResult:
    """A non-MD stage's result: each check's worst value over the molecules; passed when no
    required check failed (``None`` without required checks).
    """
    checks = worst_checks(groups)
    failed = any(c.required and c.passed is False for c in checks)
    has_required = any(c.required for c in checks)
    result = StageResult(stage=stage, ran=True, required=required, seconds=seconds, checks=checks,
                         passed=(not failed) if has_required else None, **kw)  # type: ignore[arg-type]
    if by_molecule is not None:
        result.molecule_checks = by_molecule
    return result


def failed_checks(result: ValidationResult) -> list[FailedCheck]:
    """Every failed required check of ``result`` as a record, in protocol order (sanity, NVE,
    accuracy, stress, oracle; :func:`~mdgate.results.iter_checks`): the first one decides. Within
    a molecule, the detector that stopped a trajectory comes before the completion it cut short.
    """
    md = {(st, m.name): m for st, s in result.stages.items() for m in s.molecules}
    md.update({("nve", m.name): m for m in result.molecules})
    placed = [pc for pc in iter_checks(result) if pc.check.required and pc.check.passed is False]
    out: list[FailedCheck] = []
    for _, group in groupby(placed, key=lambda pc: (pc.stage, pc.molecule)):
        for pc in sorted(group, key=lambda pc: pc.check.name == "completion"):
            c, mol = pc.check, md.get((pc.stage, pc.molecule or ""))
            bad = [r for r in mol.replicas for rc in r.checks if rc.name == c.name and rc.passed is False] if mol \
                else []
            temp = next((r.failure.temperature_K for r in bad if r.failure and r.failure.temperature_K
                         and pc.stage == "stress"), None)
            out.append(FailedCheck(stage=pc.stage, where=pc.molecule or "all", check=c.name, value=c.value,
                                   unit=c.unit, bound=c.bound, comparison=c.comparison,
                                   n_failed=len(bad) if mol else 1, n_total=len(mol.replicas) if mol else 1,
                                   time_ps=c.time_ps, temperature_K=temp,
                                   rate=mol.rate.line() if mol and mol.rate else None,
                                   undecided=bool(mol and mol.rate and mol.rate.decision == "undecided")))
    return out


def decide(result: ValidationResult) -> ValidationResult:
    """Approved only when every required check of every stage passes on every molecule and replica.

    Returns:
        ``result`` with its verdict, its one-line reason (naming the stage and check that decided,
        and how many required checks failed, by name), the failed checks as records and lines,
        and ``decided_by``.
    """
    failures = failed_checks(result)
    lines = [f.line() for f in failures]
    update: dict[str, object] = {"failures": failures, "failed_checks": lines,
                                 "decided_by": f"{failures[0].stage}/{failures[0].check}" if failures else None}
    if failures:
        counts = Counter(f"{f.stage}/{f.check}" for f in failures)
        names = ", ".join(f"{n} ×{k}" if k > 1 else n for n, k in counts.items())
        update["verdict"] = Verdict.REJECTED
        update["reason"] = (f"rejected by the {failures[0].stage} stage: {lines[0]}; {len(failures)} required "
                            f"checks failed ({names})")
        return result.model_copy(update=update)
    update["verdict"] = Verdict.APPROVED
    update["reason"] = _approved_reason(result)
    return result.model_copy(update=update)


def _approved_reason(result: ValidationResult) -> str:
    stages, accuracy = result.stages, result.accuracy
    n = sum(len(m.replicas) for m in result.molecules)
    ran = [s for s in stages if stages[s].ran]
    acc = f", force R² {accuracy.force_r2:.4f}" if accuracy is not None and accuracy.applicable else ""
    oracle = stages.get(Stage.ORACLE)
    if oracle is not None and oracle.ran and "all" in oracle.per_molecule:
        acc += f", on-trajectory force R² {oracle.per_molecule['all'].get('force_r2') or float('nan'):.4f}"
    n_mol = len(result.molecules) or max((len(s.molecules) for s in stages.values()), default=0)
    stage_list = f" ({', '.join(ran)})" if ran else ""
    return f"all required checks passed on {n_mol} molecules ({n} NVE trajectories){stage_list}{acc}"


def md_stage_result(stage: Stage, mols: list[MoleculeResult], required: bool, ran: bool, seconds: float,
                    settings: dict, skipped: str) -> StageResult:
    """An MD stage's result (NVE or stress), or a stage that did not run and why."""
    if not ran:
        return StageResult(stage=stage, ran=False, required=required, note=skipped, settings=settings)
    res = stage_result(stage, required, [m.checks for m in mols], seconds, settings=settings)
    if stage == Stage.STRESS:
        res.molecules = mols
        res.note = "NVE and stress trajectories advance in one batch: seconds are counted under NVE"
    return res
