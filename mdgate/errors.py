"""The errors mdgate raises. Each is an *input* problem: the validation could not be done.

A model that runs but fails a check is not an error: it is a Rejected verdict.
"""

from __future__ import annotations


class MdgateError(Exception):
    """Base class: a validation could not be carried out. The message is one line for users."""


class ConfigError(MdgateError):
    """Raised when a gate config file cannot be read, parsed or validated."""


class MoleculeSetError(MdgateError):
    """Raised when a molecule or reference set is missing, unreadable, empty or inconsistent."""


class ModelLoadError(MdgateError):
    """Raised when a model file is missing, is not a model, or cannot be deserialised."""


class ModelInterfaceError(MdgateError):
    """Raised when a model loads but does not provide energies and forces of the right shape,
    or cannot handle the molecules (e.g. an element it never saw).
    """


class MetadataError(MdgateError):
    """Raised when model metadata (units, cutoff, output keys) is missing or contradictory."""


class UnitMismatchError(MetadataError):
    """Raised before MD (by ``mdgate validate``, the gate and ``mdgate register``) when the model's
    forces are a known unit ratio off the reference forces (e.g. 23.06× for a model in kcal/mol
    declared as eV), or, without a reference set, clearly implausible in size at the start
    geometries. The message names the measured scale and the unit to declare.
    """


class MDTimeoutError(MdgateError):
    """Raised when a lane of MD (or a stage that calls the model) runs past its timeout
    (``MDGATE_MD_TIMEOUT_S`` per molecule): the model hangs or is far too slow. The gate ends as Error.
    """


class MDAbortedError(MdgateError):
    """Raised in a lane of MD stopped because another lane of the same gate failed (fail-fast);
    the other lane's failure is the one reported.
    """
