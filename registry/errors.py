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
