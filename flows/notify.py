"""Notifications of final decisions through a Prefect notification block
(``CustomWebhookNotificationBlock``): on every Approved, Rejected, Error or PendingReview a gate
publishes, and on every human decision (review, rollback), when ``MDGATE_NOTIFY_URL`` is set.

The receiver gets a JSON POST ``{"subject": "...", "body": "...", "source": "mdgate"}``. A failed
notification is logged and never changes a decision.
"""

from __future__ import annotations

import inspect
import logging

from prefect.blocks.notifications import CustomWebhookNotificationBlock

from flows.settings import Settings

log = logging.getLogger("mdgate.notify")
BLOCK_NAME = "mdgate-decisions"


def notification_block(settings: Settings) -> CustomWebhookNotificationBlock | None:
    """The notification block for ``settings.notify_url`` (``None`` when unset)."""
    if not settings.notify_url:
        return None
    return CustomWebhookNotificationBlock(name=BLOCK_NAME, url=settings.notify_url,
                                          json_data={"subject": "{{subject}}", "body": "{{body}}",
                                                     "source": "mdgate"}, headers=None, cookies=None)


def notify_decision(settings: Settings, name: str, version: str, status: str, reason: str,
                    by: str = "mdgate") -> bool:
    """Send one decision; ``True`` when it was delivered (or nothing is configured: ``False``)."""
    block = notification_block(settings)
    if block is None:
        return False
    subject = f"mdgate: {name} v{version} {status}"
    body = f"{name} v{version}: {status} (decided by {by}): {reason}"
    try:
        sent = block.notify(body, subject)  # synchronous: decisions are published from synchronous code
        if inspect.iscoroutine(sent):  # called from a running event loop: not sent
            sent.close()
            raise RuntimeError("notify_decision was called from asynchronous code")
    except Exception as e:  # a receiver that is down must not change the decision
        log.warning("notification to %s failed: %s: %s", settings.notify_url, type(e).__name__, e)
        return False
    return True
