"""Measuring a fetched model as the gate does: load it, then the engine's pipeline
(``mdgate.runner.run_pipeline``) with each stage a Prefect task under a hard deadline, and the MD
as lanes (``flows/md_lanes.py``) on the executor the settings name, under the gate's lease. The
candidate is measured so, and, for the champion comparison, its baseline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger

from flows.md_executors import executor_for
from flows.md_lanes import md_lane, run_lanes, steps_per_molecule
from flows.progress import GateProgress
from flows.settings import Settings
from flows.tasks import ENGINE_TASK, call_with_deadline, fetch_candidate, registry_for
from mdgate.config import GateConfig, OracleKind
from mdgate.errors import MetadataError
from mdgate.potentials import ModelMeta, load
from mdgate.potentials.describe import resolve
from mdgate.potentials.descriptor import Descriptor
from mdgate.potentials.environments import unmet
from mdgate.potentials.isolation import Isolation
from mdgate.potentials.loading import with_environment
from mdgate.results import ValidationResult
from mdgate.runner import Inputs, close, configure_threads, load_inputs, run_pipeline
from mdgate.stages.md import MoleculeRun
from registry import types as T
from registry.types import Candidate, Claim


@task(name="load", **ENGINE_TASK)
def load_candidate(model_path: Path, config: GateConfig, meta: ModelMeta, timeout_s: float | None = None,
                   isolation: Isolation | None = None, probes: list[str] | None = None) -> Inputs:
    """Load the potential and the molecule sets and check them (``mdgate.runner.load_inputs``:
    the cutoff metadata, the elements, the force units), within ``timeout_s`` (loading includes
    the model's first evaluation); a pickle or a loader in a model process (``isolation``) that
    cannot write ``probes``.
    """
    return call_with_deadline(lambda: load_inputs(model_path, config, meta, isolation=isolation, probes=probes),
                              timeout_s, "loading the model")


@task(name="environment", **ENGINE_TASK)
def build_environment(descriptor: Descriptor, isolation: Isolation) -> Isolation:
    """The model's own environment, built from its requirements (pip's output in this task's
    log) or found built; the policy with its interpreter.
    """
    logger = get_run_logger()
    return with_environment(descriptor, isolation, logger.info)


def model_isolation(settings: Settings, model: Candidate) -> Isolation:
    """The trust policy for ``model``, with its own environment (a task of the gate, shown only
    when the model's requirements do not fit the gate's environment).
    """
    isolation = settings.isolation(model.name)
    descriptor = resolve(model.model_path, model.meta)
    if unmet(descriptor.requirements):
        isolation = build_environment(descriptor, isolation)
    return isolation


def probes(settings: Settings, work: Path) -> list[str]:
    """Folders a model process must not be able to write: the gate's home (the embedded servers'
    databases and artifacts) and the gate's work folder (the model's files, the report).
    """
    return [str(p.resolve()) for p in (settings.home, work) if p.is_dir()]


def run_stage(name: str, fn: Any, timeout_s: float | None = None, threads: int = 0) -> Any:
    """Run a pipeline stage (sanity, pes, accuracy, oracle) as a Prefect task of its own, with a hard
    deadline: these stages call the model too, and a model that hangs there must end the gate as
    Error like one that hangs in MD.

    ``threads``: torch threads for the stage (0: leave them). Until MD sets its lanes' threads the
    flow's process has torch's default, every core, and with two gates at a time that oversubscribes
    the CPU: the pes stage measured 5-7× slower in the demo's gates than alone.
    """
    def body() -> Any:
        configure_threads(threads)
        return fn()

    return task(name=name, **ENGINE_TASK)(lambda: call_with_deadline(body, timeout_s, f"the {name} stage"))()


def run_measurement(settings: Settings, claim: Claim, model: Candidate, config: GateConfig, work: Path, key: str,
                    source: str, md_prefix: str = "md") -> ValidationResult:
    """Load a fetched model, then the engine's pipeline with the MD as lanes
    (:func:`run_molecules`) and each other stage as a task, under the gate's lease.

    Raises:
        MdgateError: the model or its sets are unusable.
    """
    t0 = time.perf_counter()
    inputs = load_candidate(model.model_path, config, model.meta, settings.md_timeout_s,
                            model_isolation(settings, model), probes(settings, work))
    parent = parent_level = None
    try:
        if config.oracle.enabled and config.oracle.kind == OracleKind.PARENT:
            parent, parent_level = load_parent(settings, model.meta, config, work)
        result = run_pipeline(inputs, config, model.meta, source,
                              map_md=lambda mols: run_molecules(settings, claim, inputs, config, key, md_prefix),
                              run_stage=lambda name, fn: run_stage(name, fn, settings.md_timeout_s,
                                                                   settings.md_threads(settings.max_gates)),
                              parent=parent, parent_level=parent_level)
    finally:  # a model process ends with its gate, whatever the gate's end
        close(inputs.potential, parent)
    result.timing.total_s = time.perf_counter() - t0
    return result


def load_parent(settings: Settings, meta: ModelMeta, config: GateConfig, work: Path) -> tuple[Any, str | None]:
    """The parent model (``mdgate.parent`` = ``name/version``) for the parent oracle.

    Raises:
        MetadataError: no parent named.
    """
    if config.oracle.parent_model is not None:  # a file the operator named: trusted as the config is
        return load(config.oracle.parent_model, config.md.device.value), None
    name, _, version = (meta.parent or "").rpartition("/")
    if not name or not version:
        raise MetadataError(f"oracle 'parent' needs mdgate.parent = 'name/version' (got {meta.parent!r})")
    parent = fetch_candidate(settings, name, version, work / "parent")
    return (load(parent.model_path, config.md.device.value, parent.meta, model_isolation(settings, parent),
                 probes(settings, work)),
            parent.meta.level_of_theory)


def effective_config(gate_config: GateConfig, candidate: Candidate) -> tuple[GateConfig, dict[str, str]]:
    """The configured criteria with the model's own validation/reference sets, if it names any;
    and the tags naming those sets.
    """
    extra: dict[str, str] = {}
    if candidate.molecules is None and candidate.reference is None:
        return gate_config, extra
    data = gate_config.model_dump(mode="json")
    if candidate.molecules is not None:
        data["molecules"] = str(candidate.molecules)
        extra[T.MOLECULES] = candidate.molecules_source or str(candidate.molecules)
    if candidate.reference is not None:
        data["reference"] = str(candidate.reference)
        extra[T.REFERENCE] = candidate.reference_source or str(candidate.reference)
    elif candidate.molecules is not None:
        data["reference"] = None  # the packaged reference does not describe the model's molecules
    return GateConfig.model_validate(data), extra


def md_tags(settings: Settings) -> list[str]:
    """The MD tasks' tags: ``settings.gpu_tag`` where a concurrency limit on it exists, else none.

    A tagged task takes a slot of its tag's limit at start and gives it back at the end: two
    writes to the Prefect database, even when no limit exists. On the embedded SQLite server
    those writes collide with the server's own (events, task states), and a task then waits ~2 s
    for Prefect's retry. Without a limit the tag bounds nothing, so the tasks go without it;
    where the limit cannot be read, they keep it (a limit is honoured rather than skipped).
    """
    try:
        with get_client(sync_client=True) as client:
            client.read_concurrency_limit_by_tag(settings.gpu_tag)
    except ObjectNotFound:
        return []
    except Exception as e:
        get_logger("mdgate.gate").warning("could not read the concurrency limit %s (%s): MD tasks keep the tag",
                                          settings.gpu_tag, e)
    return [settings.gpu_tag]


def run_molecules(settings: Settings, claim: Claim, inputs: Inputs, config: GateConfig, key: str,
                  md_prefix: str = "md") -> list[MoleculeRun]:
    """The gate's MD as lanes ``<md_prefix>-<molecule>[+<molecule>...]`` on the executor
    ``settings.task_runner`` names (``flows.md_executors.executor_for``); the progress artifact
    ``<key>-progress`` renews the lease while they run.

    Raises:
        MdgateError: a lane timed out or the model failed during MD.
        DaskUnavailableError: with the Dask executor, the cluster cannot be reached.
    """
    molecules = inputs.molecules
    registry = registry_for(settings)
    progress = GateProgress(f"{key}-progress", dict.fromkeys((m.name for m in molecules), steps_per_molecule(config)),
                            renew=lambda: registry.renew(claim), renew_every_s=settings.lease_s / 3)
    md_task = md_lane.with_options(tags=md_tags(settings))
    executor, lanes = executor_for(settings, md_task, inputs.potential, config, molecules, progress, md_prefix)
    runs = run_lanes(executor, lanes, progress)
    return [runs[m.name] for m in molecules]
