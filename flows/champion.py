"""Champion comparison, the part that needs the registry: find the candidate's baseline (the
version holding ``approved`` when it is gated, or its parent) and obtain its figures. Judging the
candidate against them is the engine's (``mdgate.checks.decision.judge``, through ``settle``).

The baseline's figures come from its own stored ``results.json`` when it was judged under the same
criteria (same sha256). Otherwise (other criteria, or no stored results) the gate runs the baseline
itself on the candidate's molecules and seeds under the current criteria, as it ran the candidate;
the reason and the report say which. No baseline, or no figures of it, is stated in the reason.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task

from flows.dask_tasks import DaskUnavailableError
from flows.measure import run_measurement
from flows.settings import Settings
from flows.tasks import REGISTRY_TASK, fetch_candidate, registry_for
from mdgate.checks.decision import BaselineFigures
from mdgate.config import GateConfig
from mdgate.errors import MdgateError
from mdgate.results import REMEASURED, STORED, BaselineComparison, ValidationResult, Verdict
from registry import types as T
from registry.artifacts import registered_metadata, stored_result
from registry.errors import LeaseLostError, TransientRegistryError
from registry.types import Claim, VersionInfo


def find_baseline(settings: Settings, name: str, version: str) -> VersionInfo | None:
    """The baseline version of a candidate (``settings.champion_baseline``), or ``None``."""
    registry = registry_for(settings)
    if settings.champion_baseline == "parent":
        parent = registered_metadata(registry, registry.get_version(name, version)).get(T.PARENT, "")
        pname, _, pversion = parent.rpartition("/")
        return registry.get_version(pname, pversion) if pname and pversion else None
    holder = registry.alias_version(name)
    if holder is None or holder == str(version):
        return None
    return registry.get_version(name, holder)


@task(name="find-baseline", **REGISTRY_TASK)
def find_baseline_task(settings: Settings, name: str, version: str) -> VersionInfo | None:
    """The candidate's baseline version (``find_baseline``)."""
    return find_baseline(settings, name, version)


@task(name="baseline-stored-results", **REGISTRY_TASK)
def stored_figures(settings: Settings, baseline: VersionInfo, criteria_sha256: str,
                   work: Path) -> tuple[ValidationResult | None, str]:
    """The baseline's stored ``results.json`` when it was judged under these criteria, else
    ``None`` and why its figures cannot be used.
    """
    if baseline.criteria_sha256 != criteria_sha256:
        why = "its own were judged under other criteria" if baseline.criteria_sha256 else "it has no criteria hash"
        return None, why
    stored = stored_result(registry_for(settings), baseline, work / "baseline-stored")
    if stored is None:
        return None, "it has no stored results.json"
    return stored, ""


def measure_baseline(settings: Settings, claim: Claim, baseline: VersionInfo, config: GateConfig, work: Path,
                     key: str) -> ValidationResult:
    """Run the baseline model through the same pipeline as the candidate, with the candidate's
    config as applied (its molecules, reference set and seeds), under the gate's lease.

    Raises:
        MdgateError: the baseline cannot be loaded or run.
        TransientRegistryError: the registry did not answer (the gate is retried as a whole).
    """
    model = fetch_candidate(settings, baseline.name, baseline.version, work / "baseline")
    return run_measurement(settings, claim, model, config, work / "baseline", f"{key}-baseline",
                           f"{baseline.name} v{baseline.version}", md_prefix="baseline-md")


def remeasured_figures(settings: Settings, claim: Claim, baseline: VersionInfo, config: GateConfig, work: Path,
                       key: str) -> tuple[ValidationResult | None, str]:
    """The baseline's figures measured by this gate, or ``None`` and why running it failed.

    Raises:
        TransientRegistryError, LeaseLostError, DaskUnavailableError: outages, not outcomes.
    """
    try:
        measured = measure_baseline(settings, claim, baseline, config, work, key)
    except (TransientRegistryError, LeaseLostError, DaskUnavailableError):
        raise
    except MdgateError as e:
        return None, str(e)
    except Exception as e:  # a bug in the baseline's run must not leave the candidate Running
        get_run_logger().error("baseline run failed: %s", traceback.format_exc())
        return None, f"internal error: {type(e).__name__}: {e}"
    if measured.verdict == Verdict.ERROR:
        return None, f"Error: {measured.reason}"
    return measured, ""


def baseline_figures(settings: Settings, claim: Claim, criteria_sha256: str, config: GateConfig, work: Path,
                     key: str) -> BaselineFigures:
    """Find the candidate's baseline and obtain its figures: stored, else re-measured on the
    candidate's molecules and seeds (``config``, as applied to the candidate).

    Raises:
        TransientRegistryError: the registry did not answer.
    """
    role: Literal["champion", "parent"] = "parent" if settings.champion_baseline == "parent" else "champion"
    baseline = find_baseline_task(settings, claim.name, claim.version)
    if baseline is None:
        return BaselineFigures(role, None)
    label = f"{baseline.name} v{baseline.version}" if baseline.name != claim.name else f"v{baseline.version}"
    stored, why = stored_figures(settings, baseline, criteria_sha256, work)
    if stored is not None:
        return BaselineFigures(role, label, stored, STORED)
    get_run_logger().info("baseline %s: %s; running it on the candidate's molecules and seeds", baseline.ref, why)
    measured, failed = remeasured_figures(settings, claim, baseline, config, work, key)
    if measured is not None:
        return BaselineFigures(role, label, measured, REMEASURED, why)
    return BaselineFigures(role, label, None, REMEASURED, f"{why}, and running it failed ({failed})")


def comparison_rows(section: BaselineComparison) -> list[dict[str, Any]]:
    """Candidate and baseline side by side (a Prefect table artifact)."""
    label = section.label or "baseline"
    return [{"where": c.where, "check": c.check, "candidate": float(f"{c.candidate:.4g}"),
             label: float(f"{c.baseline:.4g}"), "allowed": f"{c.comparison} {c.allowed:.4g}",
             "result": "WORSE" if c.worse else "ok"} for c in section.comparisons]
