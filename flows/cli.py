"""The ``mdgate`` command line: the engine's ``validate`` and the gate's server-side commands
(``register``, ``gate``, ``status``, ``serve``, ``demo``; ``review``, ``history``, ``rollback``,
``regate``).

Errors are one line on stderr; ``--traceback`` for more. prefect and mlflow (the registry, the
flows) and torch are imported inside the commands: prefect and mlflow read the servers' URLs from
the environment when imported, which :func:`~flows.settings.exported_settings` sets first, and
importing them takes seconds that ``--help`` or a command that fails early does not pay.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import mdgate
from flows.cli_decisions import history, regate, review, rollback
from flows.oneoff import choose, gate_once
from flows.settings import exported_settings
from mdgate.cli import EXIT_APPROVED, EXIT_ERROR, EXIT_REJECTED, convert, fail, read_meta_file, validate
from mdgate.config import load_config
from mdgate.errors import MdgateError

app = typer.Typer(
    name="mdgate",
    help="Gate machine-learned interatomic potentials by running molecular dynamics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(validate)
app.command()(convert)
for _command in (review, history, rollback, regate):
    app.command()(_command)

#: ``mdgate gate``: the version waits for a person (``mdgate review``).
EXIT_PENDING_REVIEW = 3


def installed_version() -> str:
    """The version of mdgate: the installed package's, else the source tree's (``mdgate.__version__``)."""
    try:
        return package_version("mdgate")
    except PackageNotFoundError:
        return mdgate.__version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mdgate {installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Gate machine-learned interatomic potentials by running molecular dynamics."""


def _parse_meta(pairs: list[str]) -> dict[str, str]:
    from mdgate.potentials import ModelMeta  # torch: seconds to import (see the module docstring)

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MdgateError(f"--meta {pair!r}: expected key=value")
        if key not in ModelMeta.model_fields:
            known = ", ".join(ModelMeta.model_fields)
            raise MdgateError(f"--meta {key}: unknown metadata key; known: {known}")
        out[key] = value
    return out


@app.command()
def register(
    model: Annotated[Path, typer.Argument(help="A schnetpack training run folder (best_model + config.yaml: units, "
                                          "keys and cutoff are read from it, the config is logged with the "
                                          "version), a model file written by torch.save (e.g. schnetpack "
                                          "best_model), or a weights-only folder (architecture.json + "
                                          "state_dict.pt).")],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    parent: Annotated[str | None, typer.Option(help="Parent model as NAME/VERSION (must be registered).")] = None,
    meta: Annotated[list[str] | None, typer.Option(help="Metadata KEY=VALUE (cutoff_A, energy_unit, "
                                                   "position_unit, energy_key, forces_key, level_of_theory).")] = None,
    meta_file: Annotated[Path | None, typer.Option(help="JSON model metadata [default: MODEL.json if present].")] = None,
    description: Annotated[str | None, typer.Option(help="Version description.")] = None,
    reference: Annotated[Path | None, typer.Option(help="Reference set for the unit check [default: packaged].")] = None,
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full traceback on errors.")] = False,
) -> None:
    """Log and register a potential in MLflow with its metadata (status Pending); exit 0, or 2.

    The declared units are verified first (forces against the reference set): a model whose forces
    are a known unit ratio off is refused, with the unit to declare.
    """
    settings = exported_settings()
    # after the export (see the module docstring)
    from registry import Registry, RegistryError
    from registry.register import register_potential

    try:
        data = read_meta_file(model, meta_file)
        sources = {k: f"the metadata file {meta_file or 'beside the model'}" for k in data}
        given = _parse_meta(meta or [])
        data.update(given)
        sources.update({k: f"--meta {k}" for k in given})
        info = register_potential(Registry(settings.tracking_uri, settings.experiment), model, name, parent,
                                  data, description, reference=reference, meta_sources=sources)
    except (MdgateError, RegistryError) as e:
        if traceback:
            raise
        raise fail(str(e)) from None
    status_tag = info.status.value if info.status else "-"
    typer.echo(f"registered {info.name} version {info.version} (mdgate.status={status_tag}) "
               f"at {settings.tracking_uri}")


@app.command()
def gate(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version.")],
    force: Annotated[bool, typer.Option("--force", help="Gate again even if the version has a verdict.")] = False,
    local: Annotated[bool | None, typer.Option(
        "--local/--server",
        help="--local: in this process with Prefect's temporary local server, even when a Prefect server "
             "answers. --server: only through the Prefect server (exit 2 when it does not answer). "
             "Neither: the server when it answers, else local.")] = None,
    config: Annotated[Path | None, typer.Option(help="Gate config YAML [default: MDGATE_CONFIG, else packaged].")] = None,
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full traceback on errors.")] = False,
) -> None:
    """Gate one registered version now; exit 0 Approved, 1 Rejected, 2 error, 3 PendingReview.

    Runs the gate flow through the Prefect server at MDGATE_PREFECT_API_URL (else PREFECT_API_URL,
    default http://127.0.0.1:4200/api) when it answers, else in this process with Prefect's
    temporary local server: no standing Prefect server is needed, only MLflow. Same states,
    report and registry result either way.
    """
    settings = exported_settings(config)
    # after the export (see the module docstring)
    from registry import Registry, RegistryError, Status

    try:
        choice = choose(settings, local)
        typer.echo(f"gating {name} v{version} {choice.why}", err=True)
        state = gate_once(settings, choice.mode, name, version, force)
        typer.echo(f"{state.name}: {state.message or ''}")
        verdict = state.name
        if verdict == "Skipped":
            current = Registry(settings.tracking_uri).get_version(name, version).status
            verdict = current.value if current else "Error"
    except (MdgateError, RegistryError) as e:
        if traceback:
            raise
        raise fail(str(e)) from None
    codes = {Status.APPROVED.value: EXIT_APPROVED, Status.REJECTED.value: EXIT_REJECTED,
             Status.PENDING_REVIEW.value: EXIT_PENDING_REVIEW}
    raise typer.Exit(codes.get(verdict, EXIT_ERROR))


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    config: Annotated[Path | None, typer.Option(help="Current gate config [default: MDGATE_CONFIG, else packaged].")] = None,
    where: Annotated[str | None, typer.Option(
        help="Only versions whose verdict's figures match this filter, e.g. 'metrics.force_r2 >= 0.99 AND "
             "metrics.min_time_to_failure_ps >= 2' (MLflow's search_logged_models syntax).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The verdicts of a model's versions and their figures, from MLflow; flags verdicts made
    under other criteria.
    """
    settings = exported_settings(config)
    # after the export (see the module docstring)
    from registry import Registry, RegistryError

    try:
        current = load_config(settings.config).sha256()
        reg = Registry(settings.tracking_uri, settings.experiment)
        versions = [reg.get_version(name, version)] if version else reg.list_versions(name)
        figures = reg.figures(name)
        if where:
            versions = [v for v in reg.versions_where(name, where) if v.version in {u.version for u in versions}]
    except (MdgateError, RegistryError) as e:
        raise fail(str(e)) from None
    rows = [_status_row(v, current, figures.get(v.version, {})) for v in versions]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    columns = ("version", "status", "reason", "force R²", "TTF (ps)", "updated", "criteria", "aliases")
    table = Table(title=f"{name} ({settings.tracking_uri})")
    for col in columns:
        table.add_column(col, overflow="fold", max_width=60 if col == "reason" else None)
    for row in rows:
        f = row["figures"]
        shown = {**row, "force R²": _figure(f.get("force_r2")), "TTF (ps)": _figure(f.get("min_time_to_failure_ps"))}
        table.add_row(*(str(shown[c]) for c in columns))
    Console().print(table)
    if any(r["criteria"].startswith("OTHER") for r in rows):
        typer.echo("OTHER: judged under other criteria than the current config; re-gate with "
                   "`mdgate gate NAME VERSION --force`")


def _status_row(v, current: str, figures: dict[str, float]) -> dict:
    """One version's row of ``mdgate status``."""
    criteria = "-" if not v.criteria_sha256 else ("current" if v.criteria_sha256 == current
                                                 else f"OTHER ({v.criteria_sha256[:8]})")
    return {"version": v.version, "status": v.status.value if v.status else "-", "reason": v.reason,
            "decided_by": v.tags.get("mdgate.decided_by", ""), "figures": figures,
            "updated": v.updated_at.isoformat(timespec="seconds") if v.updated_at else "-",
            "criteria": criteria, "aliases": ",".join(v.aliases)}


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="Gate config YAML [default: MDGATE_CONFIG, else packaged].")] = None,
    start_servers: Annotated[bool, typer.Option(help="Start local MLflow/Prefect servers that are down.")] = True,
    receiver_only: Annotated[bool, typer.Option(help="Only the webhook receiver (gates run on a work pool).")] = False,
) -> None:
    """Run the gate deployment, the registry sweep and the webhook receiver (Ctrl-C stops)."""
    settings = exported_settings(config)
    # after the export (see the module docstring)
    from flows.serve import serve as run_serve

    try:
        ready = (f"mdgate serve: ready (webhook {settings.webhook_endpoint}, MLflow {settings.tracking_uri}, "
                 f"Prefect {settings.prefect_api_url})")
        run_serve(settings, start_servers=start_servers, receiver_only=receiver_only,
                  on_ready=lambda: typer.echo(ready, err=True))
    except KeyboardInterrupt:
        pass
    except (MdgateError, RuntimeError, ValueError) as e:
        raise fail(str(e)) from None


@app.command()
def demo(
    config: Annotated[Path | None, typer.Option(help="Gate config YAML [default: the demo's short MD profile].")] = None,
    models_dir: Annotated[Path | None, typer.Option(help="Folder with teacher.pt and student_*.pt.")] = None,
    timeout_s: Annotated[float, typer.Option(help="Give up waiting for verdicts after this many seconds.")] = 2400.0,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the demo's servers and exit.")] = False,
) -> None:
    """The embedded end-to-end run: servers, gate, teacher + students registered and gated; exit 0, or 2."""
    settings = exported_settings(config)
    # after the export (see the module docstring)
    from flows.demo import run_demo, stop_serve
    from flows.demo_table import render_study

    if stop:
        typer.echo("stopped mdgate serve and its servers" if stop_serve(settings) else "the demo is not running")
        return
    try:
        table = run_demo(settings, models_dir, timeout_s, echo=typer.echo)
    except (MdgateError, RuntimeError, TimeoutError, FileNotFoundError) as e:
        raise fail(f"{e} (servers log: {settings.home / 'logs'}; stop them with `mdgate demo --stop`)") from None
    typer.echo("\nCompression study: teacher and distilled students, gated by MD\n")
    typer.echo(render_study(table))
    typer.echo(f"\nreports:    {settings.home / 'demo-reports'}/v<version>/report.md")
    prefect_ui = settings.prefect_api_url.removesuffix("/api")
    typer.echo(f"MLflow UI:  {settings.tracking_uri}/#/models/painn-md17")
    typer.echo(f"Prefect UI: {prefect_ui}/runs")
    typer.echo("verdicts:   .venv/bin/mdgate status painn-md17")
    typer.echo("stop the servers: .venv/bin/mdgate demo --stop")


def main() -> None:
    """Entry point of the ``mdgate`` script."""
    app()


if __name__ == "__main__":
    main()
