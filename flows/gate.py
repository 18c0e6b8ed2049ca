"""The gate flow: claim → fetch → load → sanity → MD (one task per lane of molecules) → accuracy →
oracle → report → publish.

Each task calls one engine (``mdgate``) or registry function. Final states are named after
the verdict: ``Completed(name="Approved")`` and ``Completed(name="Rejected")`` (the gate did its
job: a rejected model is an expected outcome, not an orchestration failure), and
``Failed(name="Error")`` when the model could not be validated (bad artifact, model without
forces, MD timeout, internal error): that needs a person. A version that is already gated or
being gated ends ``Completed(name="Skipped")``. With human review on (``MDGATE_REVIEW``), a
borderline result or an Error is published as ``PendingReview`` and the flow pauses for a
person's decision (``flows/review.py``); it ends named after that decision, or
``Completed(name="PendingReview")`` when nobody decided in time. Registry outages (and an unreachable Dask cluster
with ``MDGATE_TASK_RUNNER=dask``) fail the flow and leave the version Running: the sweep gates it
again once its lease expires.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import re
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State

from flows.dask_tasks import DaskUnavailableError
from flows.progress import GateProgress
from flows.settings import GATE_FLOW, Settings, load_settings
from mdgate.config import GateConfig, load_config
from mdgate.errors import MdgateError, MetadataError
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta
from mdgate.results import ValidationResult, Verdict
from registry import types as T
from registry.errors import ArtifactStoreError, HostStorageError, LeaseLostError, TransientRegistryError
from registry.summary import summary_rows
from registry.types import Candidate, Claim, ClaimOutcome, Publication, Status

SKIPPED = "Skipped"


def only_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Retry condition: retry a task only when it failed on a transient registry error."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(exc, TransientRegistryError)


REGISTRY_TASK: dict[str, Any] = dict(retries=3, retry_delay_seconds=[2, 10, 30],
                                     retry_condition_fn=only_transient, cache_policy=NO_CACHE,
                                     persist_result=False)
ENGINE_TASK: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


def slug(text: str) -> str:
    """A Prefect artifact key fragment: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-") or "x"


def registry_for(settings: Settings):
    """The registry adapter for these settings."""
    from registry import Registry

    return Registry(settings.tracking_uri, settings.experiment)


# ------------------------------------------------------------------------------------ tasks


@task(name="claim", **REGISTRY_TASK)
def claim_version(settings: Settings, name: str, version: str, flow_run: str | None,
                  force: bool) -> ClaimOutcome:
    """Take the lease on the version (status → Running)."""
    return registry_for(settings).claim(name, version, settings.lease_s, flow_run, force)


@task(name="fetch", **REGISTRY_TASK)
def fetch_candidate(settings: Settings, name: str, version: str, work_dir: Path) -> Candidate:
    """Download the version's model, metadata and the model's own validation sets."""
    from registry.artifacts import fetch_candidate as fetch

    return fetch(registry_for(settings), name, version, work_dir)


def call_with_deadline(fn: Any, timeout_s: float | None, what: str) -> Any:
    """``fn()``, or :class:`MDTimeoutError` if it has not returned after ``timeout_s``.

    Model code that never returns (a deadlock, one long C call) cannot be interrupted in a
    thread: ``fn`` runs in a daemon thread, which is left behind on timeout (it does not keep
    the process alive) while the gate goes on to publish Error.
    """
    if timeout_s is None:
        return fn()
    box: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(fn)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target, name=f"mdgate-{slug(what)}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise MDTimeoutError(f"{what} did not return within {timeout_s:g} s (MDGATE_MD_TIMEOUT_S): "
                             "the model hangs")
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_cutoff(model: Any, meta: ModelMeta) -> None:
    """The cutoff must be known, and the version's ``mdgate.cutoff_A`` must agree with the
    model's own cutoff converted with its declared ``mdgate.position_unit``.

    Raises:
        MetadataError: no cutoff at all, or the two disagree (a wrong unit or cutoff tag would
            make the engine build the wrong neighbour pairs without any error).
    """
    from mdgate.potentials.schnetpack import find_cutoff_A

    own = find_cutoff_A(model, meta.position_unit)
    if meta.cutoff_A is None and own is None:
        raise MetadataError("no cutoff: the model has none mdgate can read and the version has no "
                            "mdgate.cutoff_A tag; tag the version with mdgate.cutoff_A=<Å>")
    if meta.cutoff_A is not None and own is not None and abs(own - meta.cutoff_A) > 1e-6 * max(own, 1.0):
        raise MetadataError(
            f"contradictory metadata: mdgate.cutoff_A = {meta.cutoff_A:g} Å but the model's own cutoff "
            f"is {own:g} Å with mdgate.position_unit = {meta.position_unit!r}; fix the unit or the cutoff "
            "tag")


@task(name="load", **ENGINE_TASK)
def load_candidate(model_path: Path, config: GateConfig, meta: ModelMeta,
                   timeout_s: float | None = None) -> Any:
    """Load the potential and the molecule sets (``mdgate.runner.load_inputs``), within
    ``timeout_s`` (loading includes the model's first evaluation); check the cutoff metadata.
    """
    from mdgate.runner import load_inputs

    inputs = call_with_deadline(lambda: load_inputs(model_path, config, meta), timeout_s, "loading the model")
    check_cutoff(inputs.potential.model, meta)
    return inputs


class MDTimeoutError(MdgateError):
    """Raised in an MD task that ran past its timeout (checked at every MD step)."""


class MDAbortedError(MdgateError):
    """Raised in an MD task stopped because another molecule of the same gate failed."""


@task(name="md", **ENGINE_TASK)
def md_molecules(potential: Any, molecules: list[Molecule], config: GateConfig, threads: int, timeout_s: float,
                 progress: GateProgress | None, abort: threading.Event, pool: Any = None) -> list[Any]:
    """The MD stages (NVE and heat stress) of a lane of molecules, all their replicas in one
    batch (``mdgate.stages.md.run_md``); returns one ``MoleculeRun`` per molecule. With a ``pool``
    (:class:`flows.md_processes.MDProcessPool`) the MD runs in one of its worker processes and
    this task waits for it.

    The timeout is checked at every step (a thread cannot be interrupted from outside): the
    task raises :class:`MDTimeoutError`, which ends the gate as Error.
    """
    import os
    import socket

    from mdgate.runner import configure_threads
    from mdgate.stages.md import run_md

    configure_threads(threads)
    deadline = time.monotonic() + timeout_s
    names = "+".join(m.name for m in molecules)
    get_run_logger().info("MD of %s (%d atoms, %d replicas, %d NVE + %d stress steps) in process %d on %s",
                          names, sum(len(m.atoms) for m in molecules), config.md.n_replicas,
                          config.md.n_steps if config.md.enabled else 0,
                          config.stress.n_steps if config.stress.enabled else 0, os.getpid(), socket.gethostname())

    def tick(name: str, step: int, n_steps: int, running: bool) -> None:
        if abort.is_set():
            raise MDAbortedError(f"MD of {name} stopped: another molecule failed")
        if time.monotonic() > deadline:
            raise MDTimeoutError(f"MD of {name} timed out after {timeout_s:g} s (step {step} of {n_steps})")
        if progress is not None:
            progress(name, step, n_steps, running)

    if pool is not None:  # the task polls its worker: the deadline holds even if the model hangs
        results = pool.run(molecules, config, tick)
    else:  # the step check above cannot fire while the model does not return: a hard deadline, later
        results = call_with_deadline(lambda: run_md(potential, molecules, config, tick), timeout_s * 1.1 + 1,
                                     f"MD of {names}")
    if progress is not None:
        for m in molecules:
            progress.finish(m.name)
    return results


def run_stage(name: str, fn: Any, timeout_s: float | None = None) -> Any:
    """Run a pipeline stage (sanity, accuracy, oracle) as a Prefect task of its own, with a hard
    deadline: these stages call the model too, and a model that hangs there must end the gate as
    Error like one that hangs in MD.
    """
    return task(name=name, **ENGINE_TASK)(lambda: call_with_deadline(fn, timeout_s, f"the {name} stage"))()


@task(name="report", **ENGINE_TASK)
def write_report(result: ValidationResult, out_dir: Path, baseline: Any = None) -> Path:
    """report.md, report.html, results.json and plots (``mdgate.report.write_report``), with the
    comparison with the baseline when one was made.
    """
    from mdgate.report.markdown import write_report as write

    write(result, out_dir, baseline)
    return out_dir


@task(name="publish-error", **REGISTRY_TASK)
def publish_error(settings: Settings, claim: Claim, result: ValidationResult, criteria_sha256: str,
                  extra_tags: dict[str, str], status: Status = Status.ERROR) -> Publication:
    """Mark the version Error (or PendingReview) without a report (the report could not be
    written or stored).
    """
    return registry_for(settings).publish_error(claim, result, criteria_sha256, extra_tags, status)


@task(name="publish", **REGISTRY_TASK)
def publish(settings: Settings, claim: Claim, result: ValidationResult, report_dir: Path,
            criteria_sha256: str, extra_tags: dict[str, str], status: Status | None = None,
            reason: str | None = None) -> Publication:
    """Store the verdict in MLflow: validation run, description, tags, status last, alias
    (``status``/``reason``: a PendingReview instead of the result's verdict).
    """
    return registry_for(settings).publish(claim, result, report_dir, criteria_sha256, extra_tags, status, reason)


# ------------------------------------------------------------------------------------ flow


@flow(name=GATE_FLOW, flow_run_name="gate/{name}/v{version}", persist_result=False, validate_parameters=True)
def gate_model_version(name: str, version: str, force: bool = False, config: str | None = None) -> State:
    """Gate one registered model version and mark it Approved, Rejected or Error in MLflow.

    Args:
        name: registered model name.
        version: model version.
        force: gate again even if the version already has a verdict.
        config: gate config YAML (default: ``MDGATE_CONFIG``, else the packaged defaults).
    """
    logger = get_run_logger()
    settings = load_settings()
    gate_config = load_config(config or settings.config)
    sha = gate_config.sha256()
    run_id = current_flow_run.get_id()
    outcome = claim_version(settings, name, str(version), run_id, force)
    if outcome.claim is None:
        logger.info("not gating %s/%s: %s", name, version, outcome.reason)
        return Completed(name=SKIPPED, message=f"{name}/v{version}: {outcome.reason}")
    claim = outcome.claim
    key = f"{slug(name)}-v{slug(str(version))}"
    work = (settings.home / "work" / f"{key}-{claim.generation}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    source = f"{name} v{version}"
    extra: dict[str, str] = {}
    applied = gate_config
    try:
        result, extra, applied = run_gate(settings, claim, gate_config, work, key, source)
    except (TransientRegistryError, LeaseLostError, DaskUnavailableError):
        raise
    except HostStorageError as e:
        result = _error(str(e), source, gate_config)
    except MdgateError as e:
        result = _error(str(e), source, gate_config)
    except Exception as e:  # a bug must not leave the version Running until its lease expires
        logger.error("gate failed: %s", traceback.format_exc())
        result = _error(f"internal error: {type(e).__name__}: {e}", source, gate_config)
    baseline = None
    if result.verdict == Verdict.APPROVED and settings.champion:
        from flows.champion import champion_comparison

        result, baseline = champion_comparison(settings, claim, result, sha, applied, work, key)
    pub, report_dir, result = store_verdict(settings, claim, result, work, sha, extra, source, gate_config,
                                            baseline)
    if report_dir is not None:
        publish_prefect_artifacts(key, name, str(version), result, report_dir, pub)
    if baseline is not None and baseline.comparisons:
        from flows.champion import comparison_rows

        create_table_artifact(comparison_rows(baseline), key=f"{key}-champion",
                              description=f"{name} v{version} against its {baseline.title}")
    shutil.rmtree(work, ignore_errors=True)
    logger.info("%s/%s: %s: %s (validation run %s)", name, version, pub.status.value, result.reason,
                pub.run_url)
    from flows.notify import notify_decision

    notify_decision(settings, name, str(version), pub.status.value, result.reason if pub.status != Status.PENDING_REVIEW
                    else registry_for(settings).get_version(name, str(version)).reason)
    if pub.status == Status.PENDING_REVIEW:
        from flows.review import wait_for_review

        final, message = wait_for_review(settings, name, str(version), run_id)
        return Completed(name=final, message=message)
    message = f"{name}/v{version}: {result.reason}"
    if result.verdict == Verdict.ERROR:
        return Failed(name=Verdict.ERROR.value, message=message)
    return Completed(name=result.verdict.value, message=message)


def store_verdict(settings: Settings, claim: Claim, result: ValidationResult, work: Path, sha: str,
                  extra: dict[str, str], source: str, gate_config: GateConfig,
                  baseline: Any = None) -> tuple[Publication, Path | None, ValidationResult]:
    """Write the report (with the comparison with ``baseline``, a ``BaselineComparison``, when
    one was made) and publish the verdict (report first, status last).

    A verdict is never published without its report: when the report cannot be written on the
    gate host (disk full) or stored in MLflow's artifact store while the tracking server answers
    (its store full or unwritable), the version is marked Error, saying so. When the server does
    not answer at all, the error is raised: the version stays Running and the sweep gates it
    again once its lease is over.
    """
    from flows.servers import is_up

    try:
        report_dir: Path | None = write_report(result, work / "report", baseline)
    except OSError as e:
        report_dir = None
        why = f"[Errno {e.errno}] {e.strerror}"
        if result.verdict == Verdict.ERROR:
            reason = f"{result.reason}; the report could not be written either ({why})"
        else:
            reason = (f"the gate host cannot write the report ({why}); the {result.verdict.value} "
                      "verdict is not published without it")
        result = _error(reason, source, gate_config)
    from flows.review import review_reason

    if report_dir is not None:
        why = review_reason(settings, result)
        status = Status.PENDING_REVIEW if why else None
        try:
            return (publish(settings, claim, result, report_dir, sha, extra, status, why),
                    report_dir, result)
        except ArtifactStoreError as e:
            if not is_up(f"{settings.tracking_uri.rstrip('/')}/health"):
                raise
            cause = str(e).removeprefix("storing the report in the artifact store: ")
            reason = (f"the report could not be stored in MLflow's artifact store ({cause}); the "
                      f"{result.verdict.value} verdict is not published without it")
            result = _error(reason, source, gate_config)
    status = Status.PENDING_REVIEW if review_reason(settings, result) else Status.ERROR
    return publish_error(settings, claim, result, sha, extra, status), report_dir, result


def run_gate(settings: Settings, claim: Claim, gate_config: GateConfig, work: Path, key: str,
             source: str) -> tuple[ValidationResult, dict[str, str], GateConfig]:
    """Fetch the candidate, then measure it (:func:`run_measurement`) under the configured
    criteria with its own validation sets. Returns the result, the tags naming those sets, and
    the config as applied.

    Raises:
        MdgateError: the model or its sets are unusable (the gate ends as Error).
    """
    candidate = fetch_candidate(settings, claim.name, claim.version, work)
    config, extra = effective_config(gate_config, candidate)
    return run_measurement(settings, claim, candidate, config, work, key, source), extra, config


def run_measurement(settings: Settings, claim: Claim, model: Candidate, config: GateConfig, work: Path, key: str,
                    source: str, md_prefix: str = "md") -> ValidationResult:
    """Load a fetched model, then the engine's pipeline (``mdgate.runner.run_pipeline``) with one
    MD task per lane of molecules (:func:`run_molecules`) and each other stage as a task, under the
    gate's lease. The candidate and, for the champion comparison, its baseline are measured so.

    Raises:
        MdgateError: the model or its sets are unusable.
    """
    from mdgate.config import OracleKind
    from mdgate.runner import run_pipeline

    t0 = time.perf_counter()
    inputs = load_candidate(model.model_path, config, model.meta, settings.md_timeout_s)
    parent = parent_level = None
    if config.oracle.enabled and config.oracle.kind == OracleKind.PARENT:
        parent, parent_level = load_parent(settings, model.meta, config, work)
    result = run_pipeline(inputs, config, model.meta, source,
                          map_md=lambda mols: run_molecules(settings, claim, inputs, config, key, md_prefix),
                          run_stage=lambda name, fn: run_stage(name, fn, settings.md_timeout_s),
                          parent=parent, parent_level=parent_level)
    result.timing.total_s = time.perf_counter() - t0
    return result


def load_parent(settings: Settings, meta: ModelMeta, config: GateConfig, work: Path) -> tuple[Any, str | None]:
    """The parent model (``mdgate.parent`` = ``name/version``) for the parent oracle.

    Raises:
        MetadataError: no parent named.
    """
    from mdgate.potentials.schnetpack import load_potential

    if config.oracle.parent_model is not None:
        return load_potential(config.oracle.parent_model, ModelMeta(), config.md.device.value), None
    name, _, version = (meta.parent or "").rpartition("/")
    if not name or not version:
        raise MetadataError(f"oracle 'parent' needs mdgate.parent = 'name/version' (got {meta.parent!r})")
    parent = fetch_candidate(settings, name, version, work / "parent")
    return (load_potential(parent.model_path, parent.meta, config.md.device.value),
            parent.meta.level_of_theory)


def effective_config(gate_config: GateConfig, candidate: Candidate) -> tuple[GateConfig, dict[str, str]]:
    """The configured criteria with the model's own validation/reference sets, if it names any."""
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
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.logging import get_logger

    try:
        with get_client(sync_client=True) as client:
            client.read_concurrency_limit_by_tag(settings.gpu_tag)
    except ObjectNotFound:
        return []
    except Exception as e:
        get_logger("mdgate.gate").warning("could not read the concurrency limit %s (%s): MD tasks keep the tag",
                                 settings.gpu_tag, e)
    return [settings.gpu_tag]


def md_batches(settings: Settings, molecules: list[Molecule]) -> list[list[Molecule]]:
    """The gate's MD tasks, each a batch of molecules: ``md_parallel`` lanes of about equal atoms
    (``md_batch=lanes``), or one molecule each, largest first (``md_batch=molecule``).
    """
    from mdgate.stages.md import split_lanes

    if settings.md_batch == "lanes":
        return split_lanes(molecules, settings.md_parallel)
    # Largest first: the last task to start is a short one, and no lane idles long at the end.
    return [[m] for m in sorted(molecules, key=lambda m: len(m.atoms), reverse=True)]


def run_molecules(settings: Settings, claim: Claim, inputs: Any, config: GateConfig,
                  key: str, md_prefix: str = "md") -> list[Any]:
    """The gate's MD as tasks ``<md_prefix>-<molecule>[+<molecule>...]`` (:func:`md_batches`), at
    most ``settings.md_parallel`` at a time.

    Raises:
        MdgateError: a task timed out or the model failed during MD.
    """
    molecules: list[Molecule] = inputs.molecules
    n_parallel = min(settings.md_parallel, len(molecules))
    threads = settings.md_threads(n_parallel)
    registry = registry_for(settings)
    progress = GateProgress(
        f"{key}-progress", {m.name: max(config.md.n_steps if config.md.enabled else 0,
                                        config.stress.n_steps if config.stress.enabled else 0, 1)
                            for m in molecules},
        renew=lambda: registry.renew(claim), renew_every_s=settings.lease_s / 3,
    )
    md_task = md_molecules.with_options(tags=md_tags(settings))
    if settings.task_runner == "dask":
        from flows.dask_tasks import run_on_dask

        return run_on_dask(settings, md_task, inputs.potential, molecules, config, progress, MDAbortedError)
    pool = None
    if settings.task_runner == "processes":
        from flows.md_processes import MDProcessPool

        pool = MDProcessPool(inputs.potential, n_parallel, threads)
    with pool if pool is not None else contextlib.nullcontext():
        abort = threading.Event()
        pending = md_batches(settings, molecules)
        running: dict[concurrent.futures.Future, tuple[list[Molecule], Any]] = {}
        results: dict[str, Any] = {}
        failure: BaseException | None = None
        while (pending and failure is None) or running:
            while pending and failure is None and len(running) < n_parallel:
                batch = pending.pop(0)
                name = f"{md_prefix}-{'+'.join(m.name for m in batch)}"
                future = md_task.with_options(task_run_name=name).submit(
                    inputs.potential, batch, config, threads, settings.md_timeout_s * len(batch), progress, abort,
                    pool)
                running[future.wrapped_future] = (batch, future)
            done, _ = concurrent.futures.wait(list(running), return_when=concurrent.futures.FIRST_COMPLETED)
            for f in done:
                batch, future = running.pop(f)
                try:
                    results.update(zip([m.name for m in batch], future.result(), strict=True))
                except BaseException as e:
                    if failure is None or isinstance(failure, MDAbortedError):
                        failure = e
                    abort.set()  # the others stop at their next step; wait for them, then fail
    if failure is not None:
        raise failure
    return [results[m.name] for m in molecules]


def _error(reason: str, source: str, config: GateConfig) -> ValidationResult:
    from mdgate.runner import error_result

    return error_result(reason, source, config)


def publish_prefect_artifacts(key: str, name: str, version: str, result: ValidationResult, report_dir: Path,
                              pub: Publication) -> None:
    """The Markdown report and the per-molecule metrics table, as artifacts of the flow run."""
    report = (report_dir / "report.md").read_text()
    header = (f"**{result.verdict.value}** — [validation run in MLflow]({pub.run_url}) · "
              f"report `{pub.report_uri}`\n\n")
    create_markdown_artifact(header + report, key=f"{key}-report",
                             description=f"mdgate report of {name} v{version}: {result.verdict.value}")
    rows = summary_rows(result)
    if rows:
        create_table_artifact(rows, key=f"{key}-molecules",
                              description=f"per-molecule MD metrics of {name} v{version}")
