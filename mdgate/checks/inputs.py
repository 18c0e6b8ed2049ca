"""Input and metadata checks, the same for ``mdgate validate`` and the gate: what must hold
before any stage runs. A failure is an Error with a one-line reason that says what to fix.
"""

from __future__ import annotations

from mdgate.errors import MetadataError


def check_cutoff(declared_A: float | None, own_A: float | None, position_unit: str,
                 required: bool = True) -> float | None:
    """The model's cutoff in Å: the declared one (``mdgate.cutoff_A``) must agree with the one read
    from the model (converted with its declared ``position_unit``), and one of them must exist
    when ``required`` (a model fed the engine's neighbour pairs; an ASE calculator finds its own).

    Raises:
        MetadataError: no cutoff at all, or the two disagree (a wrong unit or cutoff tag would
            make the neighbour list drop pairs the model needs).
    """
    if declared_A is not None and own_A is not None and abs(own_A - declared_A) > 1e-6 * max(own_A, 1.0):
        raise MetadataError(
            f"contradictory metadata: mdgate.cutoff_A = {declared_A:g} Å but the model's own cutoff "
            f"is {own_A:g} Å with mdgate.position_unit = {position_unit!r}; fix the unit or the cutoff")
    if declared_A is not None:
        return float(declared_A)
    if own_A is not None:
        return float(own_A)
    if not required:
        return None
    raise MetadataError("no cutoff: the model has none mdgate can read and none is declared; declare it "
                        "(mdgate.cutoff_A=<Å> on the version, --meta cutoff_A=<Å> to register)")
