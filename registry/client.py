"""The registry adapter's facade: :class:`Registry`, one object over the concepts of
``registry/``: version reads (:mod:`registry.base`), claims and leases (:mod:`registry.claims`),
publishing verdicts (:mod:`registry.publishing`), the audit trail (:mod:`registry.audit`) and
webhooks (:mod:`registry.webhooks`).

Every method returns mdgate's own types and raises :mod:`registry.errors`, never raw MLflow
exceptions; nothing outside ``registry/`` touches MLflow client objects.
"""

from __future__ import annotations

from registry.base import gist, iso, num, one_line, quote, to_info, translate_errors
from registry.claims import CLAIM_EXPERIMENT
from registry.publishing import PublishingMixin, run_metrics, run_params
from registry.webhooks import WebhooksMixin

__all__ = ["CLAIM_EXPERIMENT", "Registry", "gist", "iso", "num", "one_line", "quote", "run_metrics",
           "run_params", "to_info", "translate_errors"]


class Registry(PublishingMixin, WebhooksMixin):
    """The MLflow model registry as mdgate uses it.

    Args:
        tracking_uri: the MLflow tracking server (``http://...``; webhooks only fire through one).
        experiment: experiment holding the validation runs.
    """
