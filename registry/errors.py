"""Errors of the registry adapter. Flows retry :class:`TransientRegistryError` only.

Problems with a model version's *content* (artifact missing, not a model, bad metadata) are
engine input errors (:class:`mdgate.errors.MdgateError` subclasses): they end a gate as Error.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: the registry could not be read or written. The message is one line."""


class TransientRegistryError(RegistryError):
    """Raised when the tracking server is unreachable, times out, or answers 5xx/429: retrying
    later may succeed.
    """


class PermanentRegistryError(RegistryError):
    """Raised when the registry refuses a request for good (bad parameter, permission)."""


class VersionNotFoundError(PermanentRegistryError):
    """Raised when a registered model or version does not exist."""


class LeaseLostError(PermanentRegistryError):
    """Raised when a gate tries to publish a verdict after another gate took its version over
    (its lease expired and a sweep claimed the version again).
    """


class ArtifactStoreError(TransientRegistryError):
    """Raised when a validation run's artifacts (the report) cannot be stored: the tracking
    server is down, or it answers but its artifact store is full or unwritable. Retried like any
    transient error; a gate whose server answers but still cannot store its report ends as
    Error, without a report.
    """


class HostStorageError(PermanentRegistryError):
    """Raised when the gate host cannot write what it downloads (disk full, read-only, not a
    folder): the gate ends as Error, whatever the model.
    """
