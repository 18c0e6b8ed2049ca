"""The verdict: stage results, failed required checks as records (in protocol order), and the
decision with its one-line reason naming the stage and check that decided.
"""

from __future__ import annotations

from mdgate.checks.evaluate import worst_checks
from mdgate.checks.table import Stage
from mdgate.results import AccuracyResult, CheckResult, FailedCheck, MoleculeResult, StageResult, Verdict


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


def failed_checks(molecules: list[MoleculeResult], accuracy: AccuracyResult | None,
                  stages: dict[str, StageResult] | None = None) -> list[FailedCheck]:
    """Every failed required check as a record, in protocol order (sanity, NVE, accuracy,
    stress, oracle): the first one decides.
    """
    stages = stages or {}
    out: list[FailedCheck] = []

    def add(stage: str, where: str, c: CheckResult, n_failed: int = 1, n_total: int = 1,
            temperature_K: float | None = None) -> None:
        if c.required and c.passed is False:
            out.append(FailedCheck(stage=stage, where=where, check=c.name, value=c.value, unit=c.unit, bound=c.bound,
                                   comparison=c.comparison, n_failed=n_failed, n_total=n_total, time_ps=c.time_ps,
                                   temperature_K=temperature_K))

    def add_md(stage: str, mols: list[MoleculeResult]) -> None:
        for mol in mols:
            # The detector that stopped a trajectory decides, not the completion it cut short.
            for c in sorted(mol.checks, key=lambda c: c.name == "completion"):
                bad = [r for r in mol.replicas for rc in r.checks if rc.name == c.name and rc.passed is False]
                temp = next((r.failure.temperature_K for r in bad if r.failure and r.failure.temperature_K
                             and stage == "stress"), None)
                add(stage, mol.name, c, len(bad), len(mol.replicas), temp)

    sanity = stages.get(Stage.SANITY)
    if sanity is not None:
        for mol, checks in sanity.molecule_checks.items():
            for c in checks:
                add("sanity", mol, c)
    add_md("nve", molecules)
    if accuracy is not None:
        for c in accuracy.checks:
            add("accuracy", "all", c)
    if (stress := stages.get(Stage.STRESS)) is not None:
        add_md("stress", stress.molecules)
    if (oracle := stages.get(Stage.ORACLE)) is not None:
        for c in oracle.checks:
            add("oracle", "all", c)
    return out


def decide(molecules: list[MoleculeResult], accuracy: AccuracyResult | None,
           stages: dict[str, StageResult] | None = None) -> tuple[Verdict, str, list[str]]:
    """Approved only when every required check of every stage passes on every molecule and replica.

    Returns:
        The verdict, its one-line reason (naming the stage and check that decided) and the
        failed checks as lines.
    """
    failures = failed_checks(molecules, accuracy, stages)
    lines = [f.line() for f in failures]
    if failures:
        names = list(dict.fromkeys(f"{f.stage}/{f.check}" for f in failures))
        first = failures[0]
        reason = (f"rejected by the {first.stage} stage: {lines[0]}; {len(failures)} required checks failed "
                  f"({', '.join(names)})")
        return Verdict.REJECTED, reason, lines
    n = sum(len(m.replicas) for m in molecules)
    ran = [s for s in (stages or {}) if (stages or {})[s].ran]
    acc = f", force R² {accuracy.force_r2:.4f}" if accuracy is not None and accuracy.applicable else ""
    oracle = (stages or {}).get(Stage.ORACLE)
    if oracle is not None and oracle.ran and "all" in oracle.per_molecule:
        acc += f", on-trajectory force R² {oracle.per_molecule['all'].get('force_r2') or float('nan'):.4f}"
    n_mol = len(molecules) or max((len(s.molecules) for s in (stages or {}).values()), default=0)
    stage_list = f" ({', '.join(ran)})" if ran else ""
    return (Verdict.APPROVED, f"all required checks passed on {n_mol} molecules ({n} NVE trajectories)"
            f"{stage_list}{acc}", lines)


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
