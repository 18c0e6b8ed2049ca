"""MLflow webhooks: the subscription that tells ``mdgate serve`` about new versions."""

from __future__ import annotations

from mlflow.entities.webhook import Webhook, WebhookEventStr

from registry.connection import Connection, translate_errors


def _find_webhook(conn: Connection, name: str) -> Webhook | None:
    """The webhook called ``name`` (every page), or ``None``."""
    token = None
    while True:
        page = conn.mlflow.list_webhooks(max_results=100, page_token=token)
        for hook in page:
            if hook.name == name:
                return hook
        token = page.token
        if not token:
            return None


def ensure_webhook(conn: Connection, name: str, url: str, secret: str,
                   events: tuple[WebhookEventStr, ...] = ("model_version.created",)) -> str:
    """Create or update the webhook called ``name`` (active, pointing at ``url``); return its id.

    Webhooks fire only through a tracking server with a SQL store.
    """
    with translate_errors(f"configuring webhook {name}"):
        hook = _find_webhook(conn, name)
        if hook is not None:
            conn.mlflow.update_webhook(hook.webhook_id, url=url, events=list(events), secret=secret,
                                       status="ACTIVE")
            return hook.webhook_id
        return conn.mlflow.create_webhook(name, url, events=list(events), secret=secret,
                                          description="mdgate: gate new model versions").webhook_id


def set_webhook_active(conn: Connection, webhook_id: str, active: bool) -> None:
    """Enable or disable a webhook."""
    with translate_errors(f"updating webhook {webhook_id}"):
        conn.mlflow.update_webhook(webhook_id, status="ACTIVE" if active else "DISABLED")


def webhook_id(conn: Connection, name: str) -> str | None:
    """The id of the webhook called ``name``, or ``None``."""
    with translate_errors("listing webhooks"):
        hook = _find_webhook(conn, name)
    return hook.webhook_id if hook is not None else None
