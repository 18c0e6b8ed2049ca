"""The ``mdgate`` command line: the engine's ``validate`` and the gate's server-side commands
(``register``, ``gate``, ``status``, ``serve``, ``demo``; ``review``, ``history``, ``rollback``,
``regate``).

Errors are one line on stderr; ``--traceback`` for more. prefect and mlflow are imported inside
the commands, after :func:`_gate_settings` has exported the servers' URLs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mdgate.cli import EXIT_APPROVED, EXIT_ERROR, EXIT_REJECTED, fail, read_meta_file, validate
from mdgate.errors import MdgateError

app = typer.Typer(
    name="mdgate",
    help="Gate machine-learned interatomic potentials by running molecular dynamics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(validate)

#: ``mdgate gate``: the version waits for a person (``mdgate review``).
EXIT_PENDING_REVIEW = 3


@app.callback()
def _root() -> None:
    """Gate machine-learned interatomic potentials by running molecular dynamics."""


def _gate_settings(config: Path | None = None):  # returns flows.settings.Settings (imported lazily)
    """``MDGATE_*`` settings (``--config`` wins over ``MDGATE_CONFIG``), exported for prefect/mlflow."""
    from flows.settings import load_settings

    settings = load_settings(**({"config": config} if config is not None else {}))
    settings.export_env()
    return settings


def _parse_meta(pairs: list[str]) -> dict[str, str]:
    from mdgate.potentials import ModelMeta

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
    settings = _gate_settings()
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
    settings = _gate_settings(config)
    from flows.oneoff import choose, gate_once
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The verdicts of a model's versions, from MLflow; flags verdicts made under other criteria."""
    settings = _gate_settings(config)
    from mdgate.config import load_config
    from registry import Registry, RegistryError

    try:
        current = load_config(settings.config).sha256()
        reg = Registry(settings.tracking_uri, settings.experiment)
        versions = [reg.get_version(name, version)] if version else reg.list_versions(name)
    except (MdgateError, RegistryError) as e:
        raise fail(str(e)) from None
    rows = []
    for v in versions:
        criteria = "-" if not v.criteria_sha256 else ("current" if v.criteria_sha256 == current
                                                     else f"OTHER ({v.criteria_sha256[:8]})")
        rows.append({"version": v.version, "status": v.status.value if v.status else "-", "reason": v.reason,
                     "updated": v.updated_at.isoformat(timespec="seconds") if v.updated_at else "-",
                     "criteria": criteria, "aliases": ",".join(v.aliases)})
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name} ({settings.tracking_uri})")
    for col in ("version", "status", "reason", "updated", "criteria", "aliases"):
        table.add_column(col, overflow="fold", max_width=70 if col == "reason" else None)
    for row in rows:
        table.add_row(*(row[c] for c in ("version", "status", "reason", "updated", "criteria", "aliases")))
    Console().print(table)
    if any(r["criteria"].startswith("OTHER") for r in rows):
        typer.echo("OTHER: judged under other criteria than the current config; re-gate with "
                   "`mdgate gate NAME VERSION --force`")


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="Gate config YAML [default: MDGATE_CONFIG, else packaged].")] = None,
    start_servers: Annotated[bool, typer.Option(help="Start local MLflow/Prefect servers that are down.")] = True,
    receiver_only: Annotated[bool, typer.Option(help="Only the webhook receiver (gates run on a work pool).")] = False,
) -> None:
    """Run the gate deployment, the registry sweep and the webhook receiver (Ctrl-C stops)."""
    settings = _gate_settings(config)
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
    settings = _gate_settings(config)
    from flows.demo import run_demo, stop_serve

    if stop:
        typer.echo("stopped mdgate serve and its servers" if stop_serve(settings) else "the demo is not running")
        return
    try:
        table = run_demo(settings, models_dir, timeout_s, echo=typer.echo)
    except (MdgateError, RuntimeError, TimeoutError, FileNotFoundError) as e:
        raise fail(f"{e} (servers log: {settings.home / 'logs'}; stop them with `mdgate demo --stop`)") from None
    from flows.demo_table import render_study

    typer.echo("\nCompression study: teacher and distilled students, gated by MD\n")
    typer.echo(render_study(table))
    typer.echo(f"\nreports:    {settings.home / 'demo-reports'}/v<version>/report.md")
    prefect_ui = settings.prefect_api_url.removesuffix("/api")
    typer.echo(f"MLflow UI:  {settings.tracking_uri}/#/models/painn-md17")
    typer.echo(f"Prefect UI: {prefect_ui}/runs")
    typer.echo("verdicts:   .venv/bin/mdgate status painn-md17")
    typer.echo("stop the servers: .venv/bin/mdgate demo --stop")



def _reviewer(by: str | None) -> str:
    import os

    who = by or os.environ.get("USER") or ""
    if not who:
        raise fail("no reviewer: pass --by NAME (USER is not set)")
    return who


@app.command()
def review(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version (any status but a running gate).")],
    approve: Annotated[bool | None, typer.Option("--approve/--reject", help="The decision.")] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded as mdgate.reason and in the audit trail).")] = "",
    by: Annotated[str | None, typer.Option(help="Reviewer [default: the USER environment variable].")] = None,
) -> None:
    """A person approves or rejects a version (overrules an automatic verdict too); exit 0, or 2.

    Sets mdgate.status, mdgate.decided_by (the reviewer) and mdgate.reason, moves or keeps the
    `approved` alias, records both in the audit trail, and resumes the gate flow run waiting for
    this review, if there is one.
    """
    if approve is None:
        raise fail("pass --approve or --reject")
    if not reason.strip():
        raise fail('pass --reason "..." (why you decide so)')
    who = _reviewer(by)
    settings = _gate_settings()
    from flows.review import resume_waiting_gate
    from registry import Registry, RegistryError

    reg = Registry(settings.tracking_uri, settings.experiment)
    try:
        before = reg.get_version(name, version)
        info = reg.review(name, version, approve, reason, who)
        alias = reg.alias_version(name)
    except RegistryError as e:
        raise fail(str(e)) from None
    typer.echo(f"{name} v{version}: {info.status.value if info.status else '-'} by {who} "
               f"(was {before.status.value if before.status else 'never gated'}); "
               f"alias {T_APPROVED}: {('v' + alias) if alias else 'none'}")
    from flows.notify import notify_decision

    notify_decision(settings, name, version, info.status.value if info.status else "-", info.reason, who)
    if before.status is not None and before.status.value == "PendingReview":
        typer.echo(resume_waiting_gate(before.flow_run, approve, reason, who), err=True)


#: The alias the gate keeps on the newest Approved version (``registry.types.APPROVED_ALIAS``).
T_APPROVED = "approved"


@app.command()
def history(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The audit trail of a model, oldest first: decisions, reviews, alias moves, re-gates, rollbacks."""
    settings = _gate_settings()
    from registry import Registry, RegistryError

    try:
        events = Registry(settings.tracking_uri, settings.experiment).history(name, version)
    except RegistryError as e:
        raise fail(str(e)) from None
    rows = [{"at": e.at.isoformat(timespec="seconds"), "version": e.version, "event": e.kind.value,
             "status": e.status, "alias": f"{e.alias_from or '-'} → {e.alias_to or '-'}" if e.kind.value in
             ("alias",) else "", "by": e.decided_by, "reason": e.reason,
             "criteria": e.criteria_sha256[:12], "flow_run": e.flow_run} for e in events]
    if as_json:
        typer.echo(json.dumps([{**e.model_dump(mode="json")} for e in events], indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}: audit trail ({settings.tracking_uri}, experiment mdgate-audit)")
    cols = ("at", "version", "event", "status", "alias", "by", "reason", "criteria", "flow_run")
    for col in cols:
        table.add_column(col, overflow="fold", max_width=60 if col == "reason" else None)
    for row in rows:
        table.add_row(*(row[c] for c in cols))
    Console(width=200).print(table)


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Annotated[str, typer.Option(help="Why (recorded on the version and in the audit trail).")] = "",
    by: Annotated[str | None, typer.Option(help="Who [default: the USER environment variable].")] = None,
) -> None:
    """Move `approved` back to the previous Approved version; exit 0, or 2.

    The version that held the alias is marked Rejected by you (the alias always points at the
    newest Approved version), and both are recorded in the audit trail.
    """
    if not reason.strip():
        raise fail('pass --reason "..." (why you roll back)')
    who = _reviewer(by)
    settings = _gate_settings()
    from registry import Registry, RegistryError

    try:
        old, alias = Registry(settings.tracking_uri, settings.experiment).rollback(name, reason, who)
    except RegistryError as e:
        raise fail(str(e)) from None
    typer.echo(f"{name}: {T_APPROVED} moved from v{old} to {('v' + alias) if alias else 'none'} "
               f"(v{old} Rejected by {who})")
    from flows.notify import notify_decision

    notify_decision(settings, name, old, "Rejected", f"rolled back: {reason}; {T_APPROVED} now "
                    f"{('v' + alias) if alias else 'none'}", who)


@app.command()
def regate(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    all_versions: Annotated[bool, typer.Option("--all", help="Every version with an outcome, not only those "
                                                              "judged under other criteria.")] = False,
    local: Annotated[bool | None, typer.Option(
        "--local/--server", help="As for `mdgate gate`: in this process, or only through the Prefect server.")] = None,
    config: Annotated[Path | None, typer.Option(help="Gate config YAML [default: MDGATE_CONFIG, else packaged].")] = None,
) -> None:
    """Gate versions again under the current criteria, one after another; exit 0 when each got an
    outcome, 2 otherwise.

    Without --all: the versions `mdgate status` flags OTHER (judged under other criteria). Each
    re-gate is recorded in the audit trail.
    """
    settings = _gate_settings(config)
    from flows.oneoff import choose, gate_once
    from mdgate.config import load_config
    from registry import Registry, RegistryError

    try:
        current = load_config(settings.config).sha256()
        versions = [v for v in Registry(settings.tracking_uri, settings.experiment).list_versions(name)
                    if v.status is not None and v.status.is_final
                    and (all_versions or v.criteria_sha256 != current)]
        if not versions:
            typer.echo(f"{name}: nothing to re-gate (every version with an outcome was judged under the "
                       "current criteria; --all re-gates them anyway)")
            return
        choice = choose(settings, local)
        typer.echo(f"re-gating {name} v{', v'.join(v.version for v in reversed(versions))} {choice.why}", err=True)
        states = {}
        for v in reversed(versions):
            state = gate_once(settings, choice.mode, name, v.version, force=True)
            states[v.version] = state.name
            typer.echo(f"v{v.version}: {state.name}: {state.message or ''}")
    except (MdgateError, RegistryError) as e:
        raise fail(str(e)) from None
    outcomes = {"Approved", "Rejected", "Error", "PendingReview"}
    raise typer.Exit(EXIT_APPROVED if all(s in outcomes for s in states.values()) else EXIT_ERROR)


def main() -> None:
    """Entry point of the ``mdgate`` script."""
    app()


if __name__ == "__main__":
    sys.exit(main())
