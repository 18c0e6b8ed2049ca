"""Units and physical constants in one place.

Internally the engine works in ASE units: energy in eV, length in Å, mass in amu, time in
ASE's time unit (Å·sqrt(amu/eV) ≈ 10.18 fs). Every public quantity carries its unit in its name.
"""

from __future__ import annotations

from ase import units as ase_units

#: Boltzmann constant in eV/K.
KB_EV_PER_K: float = ase_units.kB
#: One femtosecond in ASE time units.
FS: float = ase_units.fs
#: One picosecond in ASE time units.
PS: float = 1000.0 * ase_units.fs

#: Multiply an energy in the given unit by this factor to get eV.
ENERGY_TO_EV: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": ase_units.kcal / ase_units.mol,
    "kJ/mol": ase_units.kJ / ase_units.mol,
    "Hartree": ase_units.Hartree,
    "Ha": ase_units.Hartree,
    "Rydberg": ase_units.Rydberg,
    "Ry": ase_units.Rydberg,
}
#: Multiply a length in the given unit by this factor to get Å.
LENGTH_TO_ANGSTROM: dict[str, float] = {
    "Angstrom": 1.0,
    "Å": 1.0,
    "A": 1.0,
    "Ang": 1.0,
    "nm": 10.0,
    "Bohr": ase_units.Bohr,
    "bohr": ase_units.Bohr,
}


#: Units a model's output is commonly in, as (name, energy unit, length unit): the candidates the
#: unit check (:mod:`mdgate.potentials.unitcheck`) compares measured force scales with. One entry per
#: distinct force unit (aliases such as ``Ha`` are left out).
FORCE_UNIT_CANDIDATES: tuple[tuple[str, str, str], ...] = (
    ("eV", "eV", "Angstrom"),
    ("meV", "meV", "Angstrom"),
    ("kcal/mol", "kcal/mol", "Angstrom"),
    ("kJ/mol", "kJ/mol", "Angstrom"),
    ("Hartree", "Hartree", "Angstrom"),
    ("Rydberg", "Rydberg", "Angstrom"),
    ("Hartree/Bohr", "Hartree", "Bohr"),
)


def energy_factor(unit: str) -> float:
    """Return the factor that converts an energy in ``unit`` to eV.

    Raises:
        ValueError: if the unit is not known.
    """
    try:
        return ENERGY_TO_EV[unit]
    except KeyError:
        raise ValueError(
            f"unknown energy unit {unit!r}; use one of {sorted(ENERGY_TO_EV)}"
        ) from None


def length_factor(unit: str) -> float:
    """Return the factor that converts a length in ``unit`` to Å.

    Raises:
        ValueError: if the unit is not known.
    """
    try:
        return LENGTH_TO_ANGSTROM[unit]
    except KeyError:
        raise ValueError(
            f"unknown length unit {unit!r}; use one of {sorted(LENGTH_TO_ANGSTROM)}"
        ) from None


def force_factor(energy_unit: str, position_unit: str = "Angstrom") -> float:
    """Return the factor that converts a force in ``energy_unit``/``position_unit`` to eV/Å.

    Raises:
        ValueError: if a unit is not known.
    """
    return energy_factor(energy_unit) / length_factor(position_unit)
