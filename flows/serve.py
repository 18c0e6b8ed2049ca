"""``mdgate serve``: the gate deployment, the scheduled registry sweep and the webhook receiver
in one process (and, for the embedded default, the local MLflow and Prefect servers).

The same deployments can instead be applied with ``deployments/prefect.yaml`` to a process work
pool served by ``prefect worker start``; the receiver then runs with ``mdgate serve --receiver-only``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import secrets
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from multiprocessing import forkserver

import prefect.flow_engine as engine
import torch
import uvicorn
from prefect.client.orchestration import get_client
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger
from prefect.runner import Runner

from flows.gate import gate_model_version
from flows.servers import ServerProcess, ensure_local_servers
from flows.settings import DEPLOYMENT, Settings
from flows.sweep import start_gate_for_version, sweep_registry
from flows.tasks import registry_for
from flows.webhook import create_app
from mdgate.config import load_config

logger = get_logger("mdgate.serve")
WEBHOOK_NAME = "mdgate"


async def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The gate deployment (runs on demand) and the sweep deployment (on a schedule)."""
    gate = await gate_model_version.ato_deployment(
        name=DEPLOYMENT, tags=["mdgate"], entrypoint_type=EntrypointType.MODULE_PATH,
        description="Gate a registered model version by MD; mark it Approved/Rejected/Error in MLflow.",
    )
    sweep = await sweep_registry.ato_deployment(
        name=DEPLOYMENT, tags=["mdgate"], entrypoint_type=EntrypointType.MODULE_PATH,
        interval=timedelta(seconds=settings.sweep_interval_s),
        description="Start gates for versions never gated (lost webhooks) and expired leases.",
    )
    return [gate, sweep]


def gpu_limit(settings: Settings) -> int:
    """The tag concurrency limit to create: ``settings.gpu_limit``, else this host's CUDA GPUs."""
    if settings.gpu_limit is not None:
        return settings.gpu_limit
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ensure_gpu_limit(settings: Settings) -> None:
    """Create the tag concurrency limit on MD tasks if there is none (an existing one is kept);
    none on a host without GPU unless ``MDGATE_GPU_LIMIT`` asks for one.
    """
    limit = gpu_limit(settings)
    if limit == 0:
        logger.info("no GPU: no concurrency limit on tag %s (MD tasks: md_parallel per gate, max_gates gates)",
                    settings.gpu_tag)
        return
    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(settings.gpu_tag)
        except ObjectNotFound:
            client.create_concurrency_limit(settings.gpu_tag, limit)
            logger.info("created concurrency limit %s = %d", settings.gpu_tag, limit)


def webhook_secret(settings: Settings) -> str:
    """The receiver's HMAC secret; with a managed subscription, the MLflow webhook gets it too.

    Raises:
        ValueError: no secret while the subscription is not managed by mdgate.
    """
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
    elif settings.manage_webhook:
        secret = secrets.token_urlsafe(32)
    else:
        raise ValueError("set MDGATE_WEBHOOK_SECRET to the secret of the MLflow webhook")
    if settings.manage_webhook:
        webhook_id = registry_for(settings).ensure_webhook(WEBHOOK_NAME, settings.webhook_endpoint, secret)
        logger.info("MLflow webhook %s (%s) → %s", WEBHOOK_NAME, webhook_id, settings.webhook_endpoint)
    return secret


class Receiver:
    """The webhook receiver on a uvicorn server in a background thread."""

    def __init__(self, settings: Settings, secret: str, criteria_sha256: str):
        #: Called after a webhook created a flow run: ``serve`` wakes its runner with it, so that the
        #: run starts now rather than at the runner's next poll (``MDGATE_POLL_S``).
        self.on_flow_run: Callable[[], None] | None = None

        async def start(name: str, version: str) -> str:
            # A new version: claim generation 0. Off the event loop: the start is blocking I/O.
            started = await asyncio.to_thread(start_gate_for_version, settings, name, version, 0, criteria_sha256)
            logger.info("webhook: gate %s/%s → flow run %s (%s)", name, version, started.flow_run,
                        "claimed" if started.claimed else started.reason)
            if started.flow_run and self.on_flow_run is not None:
                self.on_flow_run()
            return started.flow_run

        app = create_app(secret, start, settings.webhook_tolerance_s, settings.webhook_max_body_bytes,
                         gates_model=settings.gates_model)
        config = uvicorn.Config(app, host=settings.webhook_host, port=settings.webhook_port,
                                log_level="warning", limit_concurrency=64, timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="mdgate-webhook", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start listening (raises RuntimeError if the port cannot be bound)."""
        self.thread.start()
        for _ in range(int(timeout_s * 10)):
            if self.server.started:
                return
            if not self.thread.is_alive():
                break
            self.thread.join(0.1)
        raise RuntimeError("webhook receiver did not start (port in use?)")

    def stop(self) -> None:
        """Stop listening."""
        self.server.should_exit = True
        self.thread.join(10)


def serve(settings: Settings, start_servers: bool = True, receiver_only: bool = False,
          on_ready: Callable[[], None] | None = None) -> None:
    """Run the gate service until interrupted (SIGINT/SIGTERM).

    Args:
        settings: the settings (``settings.export_env()`` must have run before prefect was imported).
        start_servers: start the MLflow/Prefect servers the URLs name if they are local and down.
        receiver_only: only the webhook receiver (gates run on a work pool's workers).
        on_ready: called once everything listens.
    """
    servers: list[ServerProcess] = []
    receiver = None
    try:
        if start_servers:
            servers = ensure_local_servers(settings.tracking_uri, settings.prefect_api_url, settings.home)
        sha = load_config(settings.config).sha256()
        secret = webhook_secret(settings)
        # Gates run model code in child processes that inherit this environment: not the secret.
        os.environ.pop("MDGATE_WEBHOOK_SECRET", None)
        ensure_gpu_limit(settings)
        receiver = Receiver(settings, secret, sha)
        receiver.start()
        logger.info("webhook receiver on %s; MLflow %s; Prefect %s", settings.webhook_endpoint,
                    settings.tracking_uri, settings.prefect_api_url)
        if receiver_only:
            if on_ready:
                on_ready()
            receiver.thread.join()
            return
        asyncio.run(_run_deployments(settings, on_ready, receiver))
    finally:
        if receiver is not None:
            receiver.stop()
        for server in reversed(servers):
            server.stop()


#: What a gate's process imports before its first task: imported once, by the fork server.
WARM_MODULES = ["flows.gate", "registry.artifacts",
                "mdgate.runner", "mdgate.report.markdown", "mdgate.stages.sanity", "mdgate.stages.oracle",
                "mdgate.stages.pes", "rdkit.Chem.AllChem", "tblite.ase",
                "mdgate.potentials.schnetpack",
                "schnetpack", "torch", "mlflow", "matplotlib.pyplot"]


class _ForkServerStarts:
    """Stands in for the ``multiprocessing`` module of ``prefect.flow_engine``, whose
    ``run_flow_in_subprocess`` starts each served flow run in a ``spawn`` process: a fresh
    interpreter that imports Prefect, MLflow, torch and schnetpack again (about 5 s of a gate on
    two cores). Its context is a ``forkserver`` one instead, whose server has imported them once.
    """

    def __init__(self, context: multiprocessing.context.BaseContext):
        self._context = context

    def get_context(self, method: str | None = None) -> multiprocessing.context.BaseContext:
        return self._context

    def __getattr__(self, name: str) -> object:
        return getattr(multiprocessing, name)


def enable_warm_starts() -> bool:
    """Start served gate runs as forks of a process that has imported :data:`WARM_MODULES`
    (``MDGATE_WARM_START=0`` keeps Prefect's ``spawn``). The fork server starts now, in the
    background, so that the first gate finds it ready. Returns whether warm starts are on.

    A fork server is single-threaded (it runs no Prefect service, no torch pool): its forks are
    as clean as spawned processes, without the imports.
    """
    if os.environ.get("MDGATE_WARM_START", "1").strip().lower() in ("0", "false", "no", "off") \
            or "forkserver" not in multiprocessing.get_all_start_methods() \
            or not hasattr(engine, "multiprocessing"):
        return False
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WARM_MODULES)
    engine.multiprocessing = _ForkServerStarts(context)  # type: ignore[assignment]
    threading.Thread(target=forkserver.ensure_running, name="mdgate-forkserver", daemon=True).start()
    return True


def poll_now(runner: Runner, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A thread-safe call that makes ``runner`` look for runs to start now, in ``loop``.

    A second look beside the runner's own polling is harmless: a run being submitted is skipped,
    and the server lets only one submission move a run from Scheduled to Pending. Should the
    runner's internals change, the call does nothing and the regular poll starts the run.
    """
    async def look() -> None:
        try:
            await runner._get_and_submit_flow_runs()
        except Exception as e:  # the next regular poll starts the run
            logger.debug("could not wake the runner: %s", e)

    def wake() -> None:
        if loop.is_closed():  # serve is stopping
            return
        with contextlib.suppress(RuntimeError):  # it closed meanwhile
            asyncio.run_coroutine_threadsafe(look(), loop)

    return wake


async def serve_runners(runners: list[Runner]) -> None:
    """Run ``runners`` in this loop until they stop; SIGTERM stops them all.

    Each ``Runner.start`` installs its own SIGTERM handler (the last one wins): once every start
    has begun, one handler that stops each of them replaces theirs.
    """
    tasks = [asyncio.create_task(r.start()) for r in runners]
    await asyncio.sleep(0)  # each start() has run to its first await, past its signal.signal call
    if threading.current_thread() is threading.main_thread():
        def stop_all(*args: object) -> None:
            exits = 0
            for r in runners:
                try:
                    r.handle_sigterm(*args)
                except SystemExit:  # that one had not started (or was stopping already)
                    exits += 1
            if exits == len(runners):
                raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop_all)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks)


async def _run_deployments(settings: Settings, on_ready: Callable[[], None] | None,
                           receiver: Receiver | None = None) -> None:
    # Two runners, so that ``max_gates`` bounds the gates alone: a runner's limit counts every
    # flow run it starts, and a sweep (seconds, every ``sweep_interval_s``) must neither take a
    # gate's place nor let a second gate in while it is not running.
    gates = Runner(name="mdgate-serve-gates", query_seconds=settings.poll_s, limit=settings.max_gates)
    # A scheduled sweep and one asked for (``mdgate sweep``) may overlap: claims make that safe.
    sweeps = Runner(name="mdgate-serve-sweep", query_seconds=settings.poll_s, limit=2)
    gate, sweep = await build_deployments(settings)
    if enable_warm_starts():
        # The flow itself, not only its deployment: the runner then starts its runs with
        # ``run_flow_in_subprocess`` instead of ``python -m prefect.engine``.
        await gates.aadd_flow(gate_model_version, name=DEPLOYMENT, tags=gate.tags, description=gate.description,
                              entrypoint_type=EntrypointType.MODULE_PATH)
        logger.info("gate runs start as forks of a process that has imported %s", ", ".join(WARM_MODULES))
    else:
        await gates.aadd_deployment(gate)
    await sweeps.aadd_deployment(sweep)
    if receiver is not None:
        receiver.on_flow_run = poll_now(gates, asyncio.get_running_loop())
    logger.info("at most %d gate(s) at a time; the sweep every %g s beside them", settings.max_gates,
                settings.sweep_interval_s)
    if on_ready:
        on_ready()
    await serve_runners([gates, sweeps])
