"""The ``mdgate`` commands about decisions: a person's review, the audit trail, a rollback of the
``approved`` alias, and re-gating under the current criteria. Registered on the app in
``flows/cli.py``; errors are one line on stderr.

The registry (mlflow) and the flows (prefect) are imported inside the commands: they read the
servers' URLs from the environment when imported, which :func:`~flows.settings.exported_settings`
sets first (and importing them takes seconds a command that fails early does not pay).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.oneoff import choose, gate_once
from flows.settings import exported_settings
from mdgate.cli import EXIT_APPROVED, EXIT_ERROR, fail
from mdgate.config import load_config
from mdgate.errors import MdgateError

#: The alias the gate keeps on the newest Approved version (``registry.types.APPROVED_ALIAS``).
T_APPROVED = "approved"


def _reviewer(by: str | None) -> str:
    who = by or os.environ.get("USER") or ""
    if not who:
        raise fail("no reviewer: pass --by NAME (USER is not set)")
    return who


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
    settings = exported_settings()
    # after the export (see the module docstring)
    from flows.notify import notify_decision
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
    notify_decision(settings, name, version, info.status.value if info.status else "-", info.reason, who)
    if before.status is not None and before.status.value == "PendingReview":
        typer.echo(resume_waiting_gate(before.flow_run, approve, reason, who), err=True)


def history(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The audit trail of a model, oldest first: decisions, reviews, alias moves, re-gates, rollbacks."""
    settings = exported_settings()
    # after the export (see the module docstring)
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
    table = Table(title=f"{name}: audit trail ({settings.tracking_uri}, experiment mdgate-audit)")
    cols = ("at", "version", "event", "status", "alias", "by", "reason", "criteria", "flow_run")
    for col in cols:
        table.add_column(col, overflow="fold", max_width=60 if col == "reason" else None)
    for row in rows:
        table.add_row(*(row[c] for c in cols))
    Console(width=200).print(table)


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
    settings = exported_settings()
    # after the export (see the module docstring)
    from flows.notify import notify_decision
    from registry import Registry, RegistryError

    try:
        old, alias = Registry(settings.tracking_uri, settings.experiment).rollback(name, reason, who)
    except RegistryError as e:
        raise fail(str(e)) from None
    typer.echo(f"{name}: {T_APPROVED} moved from v{old} to {('v' + alias) if alias else 'none'} "
               f"(v{old} Rejected by {who})")
    notify_decision(settings, name, old, "Rejected", f"rolled back: {reason}; {T_APPROVED} now "
                    f"{('v' + alias) if alias else 'none'}", who)


def regate(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    all_versions: Annotated[bool, typer.Option("--all", help="Every version with an outcome, not only those "
                                                              "judged under other criteria.")] = False,
    local: Annotated[bool | None, typer.Option(
        "--local/--server", help="As for `mdgate gate`: in this process, or only through the Prefect server.")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Gate config YAML [default: MDGATE_CONFIG, else packaged].")] = None,
) -> None:
    """Gate versions again under the current criteria, one after another; exit 0 when each got an
    outcome, 2 otherwise.

    Without --all: the versions `mdgate status` flags OTHER (judged under other criteria). Each
    re-gate is recorded in the audit trail.
    """
    settings = exported_settings(config)
    # after the export (see the module docstring)
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
