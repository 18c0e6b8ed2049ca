"""The MLflow model registry adapter: versions, the status lifecycle, validation runs.

Returns mdgate's own types (:mod:`registry.types`) and raises :mod:`registry.errors`.
Never imports prefect.
"""

from registry.client import Registry
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
    "LeaseLostError",
    "PermanentRegistryError",
    "Publication",
    "Registry",
    "RegistryError",
    "Status",
    "TransientRegistryError",
    "VersionInfo",
    "VersionNotFoundError",
]
