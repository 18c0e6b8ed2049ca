"""The MLflow model registry adapter: versions, the status lifecycle, validation runs.

Modules of functions over one :class:`~registry.connection.Connection` (versions, claims,
publishing, aliases, reviews, audit, webhooks), put together by the facade :class:`Registry`;
:mod:`registry.artifacts` and :mod:`registry.register` work through the facade. Returns mdgate's
own types (:mod:`registry.types`) and raises :mod:`registry.errors`. Never imports prefect.
"""

from registry.client import Registry
from registry.connection import Connection, connect
from registry.errors import (
    LeaseLostError,
    PermanentRegistryError,
    RegistryError,
    TransientRegistryError,
    VersionNotFoundError,
)
from registry.types import Candidate, Claim, ClaimOutcome, Publication, Status, VersionInfo

__all__ = [
    "Candidate",
    "Claim",
    "ClaimOutcome",
    "Connection",
    "LeaseLostError",
    "PermanentRegistryError",
    "Publication",
    "Registry",
    "RegistryError",
    "Status",
    "TransientRegistryError",
    "VersionInfo",
    "VersionNotFoundError",
    "connect",
]
