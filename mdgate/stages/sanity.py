"""The sanity stage: cheap checks before any MD (seconds per molecule).

On a slightly rattled copy of each start geometry (forces of order 1 eV/Å, so that relative
errors are meaningful):

* energy invariance under random rotations + translations, and forces rotating with the molecule;
* energy invariance under permutations of same-element atoms;
* batched output equal to single-molecule output;
* energy–force consistency: central finite differences of the energy along random directions in
  configuration space against −F·d (non-conservative forces fail this without any MD), and the
  net torque of the forces (zero for the gradient of a rotation-invariant energy);
* relaxation from the start geometry with ASE's BFGS on the candidate, and the RMSD (after
  optimal superposition) to the start geometry.

A model that fails here is *Rejected* without paying for MD: it runs but is physically wrong. A
model that raises here is *broken* (an Error, :class:`~mdgate.errors.ModelInterfaceError`). A
model that returns NaN/inf is not judged here: the MD stages' ``finite`` check rejects it at its
first step, with the step recorded, as before this stage existed.
"""

from __future__ import annotations

import time

import numpy as np
from ase.optimize import BFGS

from mdgate.checks.evaluate import check, check_names, enabled
from mdgate.checks.table import CHECKS, Stage
from mdgate.checks.verdict import stage_result
from mdgate.config import GateConfig, SanitySettings
from mdgate.molecules import Molecule
from mdgate.potentials import Potential
from mdgate.potentials.predict import PotentialCalculator, predict
from mdgate.results import CheckResult, StageResult

#: Rattle (Å, standard deviation) of the geometry the invariance and consistency checks use.
RATTLE_A = 0.05
#: Floor of the finite-difference check's denominator (eV/Å).
FD_FLOOR_EV_PER_A = 0.1


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def kabsch_rmsd_A(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD between two conformations ``[n, 3]`` after removing translation and rotation."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(a0.T @ b0)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((a0 @ rot - b0) ** 2, axis=1))))


class NonFiniteOutput(ValueError):
    """The model returned NaN/inf on a sanity structure."""


def _finite(name: str, *arrays: np.ndarray) -> None:
    if not all(np.isfinite(a).all() for a in arrays):
        raise NonFiniteOutput(f"the model returned non-finite energies or forces for {name}")


def _same_element_permutation(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of the atoms that only swaps atoms of the same element."""
    perm = np.arange(len(z))
    for el in np.unique(z):
        idx = np.flatnonzero(z == el)
        perm[idx] = rng.permutation(idx)
    return perm


def measure_molecule(potential: Potential, mol: Molecule, settings: SanitySettings,
                     batched_forces: np.ndarray | None = None) -> dict[str, float | None]:
    """The sanity figures of one molecule (see the module docstring)."""
    rng = np.random.default_rng([settings.seed, len(mol.atoms), *mol.atoms.numbers[:8]])
    z = mol.atoms.numbers
    x = mol.atoms.positions + rng.normal(scale=RATTLE_A, size=mol.atoms.positions.shape)
    n = len(z)
    structures = [(z, x)]
    rotations = []
    for _ in range(settings.n_rotations):
        rot, shift = random_rotation(rng), rng.normal(scale=5.0, size=3)
        rotations.append(rot)
        structures.append((z, x @ rot.T + shift))
    perms = [_same_element_permutation(z, rng) for _ in range(settings.n_rotations)]
    structures += [(z[perm], x[perm]) for perm in perms]
    dirs = rng.normal(size=(settings.n_directions, n, 3))
    dirs /= np.linalg.norm(dirs.reshape(len(dirs), -1), axis=1)[:, None, None]
    h = settings.fd_step_A
    for d in dirs:
        structures += [(z, x + h * d), (z, x - h * d)]
    energies, forces = predict(potential, structures, batch_size=16)
    _finite(mol.name, energies, *forces)
    e0, f0 = energies[0], forces[0]
    k = 1
    rot_e = rot_f = perm_e = 0.0
    for rot in rotations:
        rot_e = max(rot_e, abs(energies[k] - e0))
        rot_f = max(rot_f, float(np.abs(forces[k] - f0 @ rot.T).max()))
        k += 1
    for perm in perms:
        perm_e = max(perm_e, abs(energies[k] - e0))
        rot_f = max(rot_f, float(np.abs(forces[k] - f0[perm]).max()))
        k += 1
    fd = (energies[k::2] - energies[k + 1::2]) / (2 * h)
    proj = -np.einsum("dij,ij->d", dirs, f0)
    # Relative to the projected forces, with a floor of 0.1 eV/Å: a model with almost no forces
    # (untrained) is not judged on float32 rounding of nothing.
    fd_rel = float(np.sqrt(np.mean((fd - proj) ** 2)) / max(np.sqrt(np.mean(proj ** 2)), FD_FLOOR_EV_PER_A))
    torque = float(np.linalg.norm(np.cross(x - x.mean(0), f0).sum(0)))
    out: dict[str, float | None] = {
        "rotation_energy_error_meV_per_atom": rot_e / n * 1000.0,
        "force_rotation_error_eV_per_A": rot_f,
        "permutation_energy_error_meV_per_atom": perm_e / n * 1000.0,
        "fd_force_error_relative": fd_rel,
        "net_torque_eV": torque,
        "batch_force_error_eV_per_A": None if batched_forces is None else float(np.abs(batched_forces - f0).max()),
    }
    fd_bound = enabled(settings.criteria, "fd_force_error_relative")
    if fd_bound is not None and fd_bound.bound is not None and fd_rel > fd_bound.bound:
        # BFGS cannot converge on forces that are not a gradient: it would spend its whole step
        # budget (minutes for a direct-force model) to say nothing the failed check has not said.
        out.update({"relax_rmsd_A": None, "relax_max_force_eV_per_A": None, "relax_steps": 0.0})
    else:
        out.update(relax(potential, mol, settings))
    return out


def relax(potential: Potential, mol: Molecule, settings: SanitySettings) -> dict[str, float | None]:
    """Relax the start geometry with BFGS on the candidate: RMSD to the start, steps, final max force."""
    if settings.relax_steps == 0:
        return {"relax_rmsd_A": None, "relax_max_force_eV_per_A": None, "relax_steps": 0.0}
    atoms = mol.atoms.copy()
    atoms.calc = PotentialCalculator(potential)
    opt = BFGS(atoms, logfile=None, maxstep=0.1)
    opt.run(fmax=settings.relax_fmax_eV_per_A, steps=settings.relax_steps)
    fmax = float(np.abs(atoms.get_forces()).max())
    _finite(mol.name, atoms.positions, np.array([fmax]))
    return {"relax_rmsd_A": kabsch_rmsd_A(atoms.positions, mol.atoms.positions),
            "relax_max_force_eV_per_A": fmax, "relax_steps": float(opt.nsteps)}


def run_sanity(potential: Potential, molecules: list[Molecule],
               settings: SanitySettings) -> tuple[dict[str, dict[str, float | None]], dict[str, list[CheckResult]]]:
    """Measure every molecule and apply the sanity criteria.

    Returns:
        Per molecule: its figures, and its checks.

    A molecule on which the model returns NaN/inf gets unmeasured, informational checks.
    """
    rattled = []
    for mol in molecules:
        rng = np.random.default_rng([settings.seed, len(mol.atoms), *mol.atoms.numbers[:8]])
        rattled.append((mol.atoms.numbers, mol.atoms.positions + rng.normal(scale=RATTLE_A, size=(len(mol.atoms), 3))))
    # All molecules in one call: each molecule's forces must equal its forces alone.
    _, batched = predict(potential, rattled, batch_size=len(rattled))
    figures, checks = {}, {}
    for mol, fb in zip(molecules, batched, strict=True):
        try:
            figures[mol.name] = measure_molecule(potential, mol, settings, fb)
        except NonFiniteOutput as e:
            figures[mol.name] = {}
            checks[mol.name] = [CheckResult(name=name, value=None, unit=CHECKS[name].unit, bound=b.bound,
                                            comparison=CHECKS[name].comparison, passed=None, required=False,
                                            note=f"not measured: {e}; judged by the MD stages' finite check")
                                for name in check_names(settings.criteria)
                                if (b := enabled(settings.criteria, name)) is not None]
            continue
        checks[mol.name] = [check(name, figures[mol.name].get(name), b, required=settings.required)
                            for name in check_names(settings.criteria)
                            if (b := enabled(settings.criteria, name)) is not None]
    return figures, checks


def run_sanity_stage(potential: Potential, molecules: list[Molecule], config: GateConfig) -> StageResult:
    """The sanity stage (``mdgate.stages.sanity``) as a stage result."""
    st = config.sanity
    t0 = time.perf_counter()
    figures, checks = run_sanity(potential, molecules, st)
    return stage_result(Stage.SANITY, st.required, list(checks.values()), time.perf_counter() - t0,
                  settings=st.model_dump(mode="json", exclude={"criteria"}), per_molecule=figures,
                  by_molecule=checks)
