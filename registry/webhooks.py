"""MLflow webhooks: the subscription that tells ``mdgate serve`` about new versions."""

from __future__ import annotations

from registry.base import RegistryBase, translate_errors


class WebhooksMixin(RegistryBase):
    """Create, find and switch MLflow webhooks."""

    def ensure_webhook(self, name: str, url: str, secret: str,
                       events: tuple[str, ...] = ("model_version.created",)) -> str:
        """Create or update the webhook called ``name`` (active, pointing at ``url``); return its id.

        Webhooks fire only through a tracking server with a SQL store.
        """
        with translate_errors(f"configuring webhook {name}"):
            token = None
            while True:
                page = self.client.list_webhooks(max_results=100, page_token=token)
                for hook in page:
                    if hook.name == name:
                        self.client.update_webhook(hook.webhook_id, url=url, events=list(events),
                                                   secret=secret, status="ACTIVE")
                        return hook.webhook_id
                token = page.token
                if not token:
                    break
            return self.client.create_webhook(name, url, events=list(events), secret=secret,
                                              description="mdgate: gate new model versions").webhook_id

    def set_webhook_active(self, webhook_id: str, active: bool) -> None:
        """Enable or disable a webhook."""
        with translate_errors(f"updating webhook {webhook_id}"):
            self.client.update_webhook(webhook_id, status="ACTIVE" if active else "DISABLED")

    def webhook_id(self, name: str) -> str | None:
        """The id of the webhook called ``name``, or ``None``."""
        with translate_errors("listing webhooks"):
            token = None
            while True:
                page = self.client.list_webhooks(max_results=100, page_token=token)
                for hook in page:
                    if hook.name == name:
                        return hook.webhook_id
                token = page.token
                if not token:
                    return None
