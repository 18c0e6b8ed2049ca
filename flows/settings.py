"""Settings of the gate service, from ``MDGATE_*`` environment variables.

Built by :func:`load_settings`, never at import time. The ecosystem's own variables are honoured:
``MLFLOW_TRACKING_URI`` (when ``MDGATE_TRACKING_URI`` is unset) and ``PREFECT_API_URL`` (when
``MDGATE_PREFECT_API_URL`` is unset). Defaults are the embedded setup: MLflow and Prefect servers
on 127.0.0.1 with SQLite under ``MDGATE_HOME``.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mdgate.checks.decision import ChampionRule
from mdgate.potentials.isolation import Isolation

__all__ = ["DEPLOYMENT", "GATE_FLOW", "SWEEP_FLOW", "ChampionRule", "Settings", "load_settings"]

GATE_FLOW = "gate-model-version"
SWEEP_FLOW = "sweep-registry"
DEPLOYMENT = "mdgate"


class Settings(BaseSettings):
    """Where the registry and orchestrator are, and how the gate service behaves."""

    model_config = SettingsConfigDict(env_prefix="MDGATE_", extra="ignore", populate_by_name=True)

    tracking_uri: str = Field(
        default="http://127.0.0.1:5000",
        validation_alias=AliasChoices("MDGATE_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )
    """MLflow tracking server. Webhooks only fire through a server, so every writer must use
    its ``http://`` URI, not ``sqlite:///`` directly."""
    prefect_api_url: str = Field(
        default="http://127.0.0.1:4200/api",
        validation_alias=AliasChoices("MDGATE_PREFECT_API_URL", "PREFECT_API_URL"),
    )
    """Prefect server API."""
    config: Path | None = None
    """Gate config YAML (same format as ``mdgate validate --config``); unset = packaged defaults."""
    home: Path = Path(".mdgate")
    """Folder for the embedded servers' databases, artifacts and logs, and gate work folders."""
    experiment: str = "mdgate"
    """MLflow experiment that holds the validation runs."""
    models: str = "*"
    """Registered model names the webhook and the sweep gate (shell pattern, e.g. ``painn-*``);
    ``mdgate gate`` gates any version it is asked to."""
    lease_s: Annotated[float, Field(gt=0)] = 3600.0
    """How long a ``Running`` claim lasts without renewal; MD progress renews it. A version left
    ``Running`` past its lease (a crashed gate) is gated again by the sweep."""
    md_timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    """Timeout of one molecule's MD (a lane of k molecules gets k times it); a timeout ends the
    gate with status Error."""
    md_parallel: Annotated[int, Field(ge=1)] = 2
    """MD tasks of one gate that run at the same time, its lanes (on a 2-core CPU, two tasks
    with one thread each beat one task with two threads)."""
    md_batch: Literal["lanes", "molecule"] = "lanes"
    """How a gate's MD is cut into tasks: ``lanes`` (the default) splits the molecules into
    ``md_parallel`` batches of about equal atoms (``mdgate.stages.md.split_lanes``), one task
    ``md-<molecule>+<molecule>...`` each, all of a lane's molecules advanced by one model call per
    step; ``molecule`` runs one task ``md-<molecule>`` per molecule, largest first, at most
    ``md_parallel`` at a time. Lanes pay the per-step Python work and small-matrix overhead once
    per lane instead of once per molecule (``benchmarks/md_lanes.py``); one task per molecule
    shows each molecule's MD as a task of its own in the UI. With ``task_runner=dask`` MD always
    runs one task per molecule."""
    cores: Annotated[int, Field(ge=0)] = 0
    """CPU cores the gate may use (0 = all): each MD task gets ``cores // md_parallel`` torch threads."""
    gpu_tag: str = "mdgate-gpu"
    """Tag on the MD tasks when a Prefect tag concurrency limit on it exists (it then bounds GPU
    work); without a limit the tasks go untagged (``flows.measure.md_tags``)."""
    gpu_limit: Annotated[int, Field(ge=0)] | None = None
    """The limit ``mdgate serve`` creates for ``gpu_tag`` when none exists: MD tasks running at
    once over all gates (set it to the number of GPUs on GPU workers). Default: the serve host's
    CUDA GPUs, and no limit on a host without one (each slot taken is a write to the Prefect
    database: on the embedded SQLite server, concurrent writes make about one MD task in two
    wait ~2 s for a retry; ``benchmarks/gate_fixed_cost.py``). 0: no limit."""
    task_runner: Literal["local", "processes", "dask"] = "processes"
    """Where a gate's per-molecule MD tasks run: ``processes`` (the default: ``md_parallel`` worker
    processes of the flow's machine, each with ``cores // md_parallel`` torch threads, no
    interpreter lock shared, forked in a fraction of a second when that is one thread;
    ``flows/md_processes.py``), ``local`` (threads of the flow's process, at most ``md_parallel``
    at once)
    or ``dask`` (a Dask cluster through prefect-dask: the one at
    ``dask_address``, else one each gate starts from ``dask_cluster_class``); ``flows/dask_tasks.py``."""
    dask_address: str | None = None
    """Scheduler of a running Dask cluster, e.g. ``tcp://10.0.0.5:8786`` (with ``task_runner=dask``)."""
    dask_cluster_class: str = "distributed.LocalCluster"
    """Without ``dask_address``: the Dask cluster class each gate starts for its MD tasks."""
    dask_cluster_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Its keyword arguments, as JSON (``MDGATE_DASK_CLUSTER_KWARGS='{"n_workers": 4}'``)."""
    dask_resources: dict[str, float] = Field(default_factory=dict)
    """Dask worker resources one MD task holds, as JSON: ``{"GPU": 1}`` with workers started
    ``--resources GPU=1`` runs at most one MD task per GPU."""
    dask_md_threads: Annotated[int, Field(ge=1)] = 1
    """Torch CPU threads of an MD task on a Dask worker (give workers one thread per task)."""
    max_gates: Annotated[int, Field(ge=1)] = 1
    """Gates one ``mdgate serve`` process runs at the same time (the registry sweep runs beside
    them and takes no gate's place). On a machine of a few cores one gate at a time already uses
    them all: its MD runs in ``md_parallel`` worker processes."""
    poll_s: Annotated[float, Field(gt=0)] = 2.0
    """How often ``mdgate serve`` polls Prefect for gate runs to start (a run its webhook created
    starts at once; the poll starts the others: sweeps, ``mdgate gate``, retries)."""
    sweep_interval_s: Annotated[float, Field(gt=0)] = 60.0
    """Registry sweep schedule: catches versions whose webhook was lost and expired leases."""
    webhook_host: str = "127.0.0.1"
    """Interface the webhook receiver listens on."""
    webhook_port: Annotated[int, Field(ge=0, le=65535)] = 8765
    """Port of the webhook receiver."""
    webhook_url: str | None = None
    """URL MLflow calls (default ``http://<webhook_host>:<webhook_port>/mlflow``)."""
    webhook_secret: SecretStr | None = None
    """HMAC secret shared with the MLflow webhook. Unset: ``mdgate serve`` makes a random one and
    writes it into the subscription it manages."""
    webhook_tolerance_s: Annotated[float, Field(gt=0)] = 300.0
    """Largest accepted age of ``X-MLflow-Timestamp`` (replay window)."""
    webhook_max_body_bytes: Annotated[int, Field(gt=0)] = 256 * 1024
    """Larger webhook bodies are refused with 413 before being read."""
    manage_webhook: bool = True
    """``mdgate serve`` creates or updates the MLflow webhook named ``mdgate`` to point at it."""
    review: bool = False
    """Human review: a result within ``review_margin`` of a required bound, or an Error, ends as
    ``PendingReview`` and the gate flow waits (paused, holding its process) for a person's decision
    from the Prefect UI form or ``mdgate review``. Off: the gate decides every version itself."""
    review_margin: Annotated[float, Field(ge=0)] = 0.05
    """Relative margin of a borderline result: a required check that passes with
    ``|value - bound| <= review_margin * |bound|``."""
    review_timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    """How long a gate flow waits for a review; afterwards the run ends ``PendingReview`` and the
    version waits for ``mdgate review``."""
    review_poll_s: Annotated[int, Field(ge=1)] = 10
    """How often a waiting gate flow asks Prefect whether it was resumed."""
    champion: dict[str, ChampionRule] = Field(default_factory=dict)
    """Champion comparison, as JSON: check name → how much worse than the baseline's value the
    candidate may be (``{"min_force_r2": {"max_absolute_change": 0.005},
    "drift_slope_meV_per_atom_per_ps": {"max_relative_change": 2.0}}``). Empty: no comparison.
    A candidate worse than allowed on any compared figure is Rejected, naming the baseline."""
    notify_url: str | None = None
    """Where every final decision (gate outcome, review, rollback) is posted as JSON, through a
    Prefect notification block (``flows/notify.py``). Unset: no notifications."""
    allow_pickles: str = ""
    """Registered model names whose pickled versions (``torch.save(model)``) the gate may load:
    comma-separated shell patterns (``painn-*,teacher``); empty: none, such a version ends as Error
    saying how to store it weights-only (``mdgate convert``). An allowed pickle, like any model
    whose loader imports code, is loaded and evaluated only in the model process
    (``mdgate.potentials.remote``)."""
    model_process: Literal["auto", "always", "never"] = "auto"
    """``auto``: pickles and loaders in a model process, weights-only models in the gate's process;
    ``always``: every model in a model process; ``never``: none (the candidate's code then runs
    where the verdict is written: for a registry whose every version you trust)."""
    model_sandbox: Literal["auto", "required", "off"] = "auto"
    """The model process's own user, network, PID and mount namespaces (no network, read-only
    files but its folder): ``auto`` where the kernel allows them, ``required`` an Error where it
    does not, ``off`` a clean environment and its own folder only."""
    champion_baseline: Literal["approved", "parent"] = "approved"
    """The baseline: the version holding ``approved`` when the candidate is gated, or the
    candidate's parent (``mdgate.parent``)."""

    @property
    def webhook_endpoint(self) -> str:
        """The URL the MLflow webhook posts to."""
        return self.webhook_url or f"http://{self.webhook_host}:{self.webhook_port}/mlflow"

    @property
    def gate_deployment(self) -> str:
        """``flow/deployment`` name of the gate deployment."""
        return f"{GATE_FLOW}/{DEPLOYMENT}"

    def gates_model(self, name: str) -> bool:
        """Do the webhook and the sweep gate versions of this registered model?"""
        return fnmatch.fnmatchcase(name, self.models)

    def isolation(self, name: str) -> Isolation:
        """The trust policy for loading a version of registered model ``name``."""
        return Isolation.for_model(name, self.allow_pickles, model_process=self.model_process,
                                   sandbox=self.model_sandbox)

    def md_threads(self, n_tasks: int) -> int:
        """Torch threads per MD task when ``n_tasks`` run at once (at least 1)."""
        cores = self.cores or os.cpu_count() or 1
        return max(1, cores // max(1, n_tasks))

    def export_env(self) -> None:
        """Put the tracking and Prefect URLs in the environment for child processes and for
        libraries that read them at import (call before importing prefect).
        """
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        os.environ["PREFECT_API_URL"] = self.prefect_api_url
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and ``overrides``)."""
    return Settings(**overrides)  # type: ignore[arg-type]


def exported_settings(config: Path | None = None) -> Settings:
    """The settings for a command (``--config`` wins over ``MDGATE_CONFIG``), with the servers' URLs
    exported to the environment: call it before anything imports prefect or mlflow.
    """
    settings = load_settings(**({"config": config} if config is not None else {}))
    settings.export_env()
    return settings
