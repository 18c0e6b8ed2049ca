"""Metric functions: figures measured from a whole trajectory's energies (energy conservation)
and from predicted vs reference forces. Pure numpy; units in the names.

:data:`TRAJECTORY_METRICS` maps each check measured from a recorded trajectory's energies (rather
than by a live MD observer) to the function computing its value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mdgate.md.trajectory import Trajectory


def drift_slope_meV_per_atom_per_ps(time_ps: np.ndarray, e_tot_eV: np.ndarray, n_atoms: int) -> float:
    """Slope of a least-squares line through E_tot(t), in meV/atom/ps (signed)."""
    t = np.asarray(time_ps, float)
    e = np.asarray(e_tot_eV, float)
    if t.size < 2 or np.ptp(t) == 0:
        return float("nan")
    slope_eV_per_ps = np.polyfit(t, e, 1)[0]
    return float(slope_eV_per_ps * 1000.0 / n_atoms)


def drift_slope_stderr_meV_per_atom_per_ps(time_ps: np.ndarray, e_tot_eV: np.ndarray, n_atoms: int) -> float:
    """Standard error of the fitted drift slope, in meV/atom/ps, for autocorrelated noise.

    E_tot(t) of a Verlet trajectory oscillates around its trend (the shadow Hamiltonian's
    wobble); over a short run that oscillation alone gives an apparent slope. The residuals'
    integrated autocorrelation time τ (up to the first zero of the autocorrelation) gives the
    effective number of independent samples n_eff = N / (1 + 2τ), and
    SE = σ_res · sqrt(12 / n_eff) / T for samples spread evenly over a run of length T.
    """
    t = np.asarray(time_ps, float)
    e = np.asarray(e_tot_eV, float) * 1000.0 / n_atoms
    n = t.size
    if n < 4 or np.ptp(t) == 0:
        return float("nan")
    res = e - np.polyval(np.polyfit(t, e, 1), t)
    var = float(np.var(res))
    if var == 0:
        return 0.0
    acf = np.correlate(res, res, mode="full")[n - 1:] / (var * n)
    zero = np.argmax(acf <= 0) if np.any(acf <= 0) else n
    tau = float(np.sum(acf[1:zero])) if zero > 1 else 0.0
    n_eff = max(2.0, n / (1.0 + 2.0 * max(tau, 0.0)))
    return float(np.sqrt(var) * np.sqrt(12.0 / n_eff) / np.ptp(t))


def max_energy_deviation_meV_per_atom(e_tot_eV: np.ndarray, n_atoms: int) -> float:
    """max_t |E_tot(t) − E_tot(0)| in meV/atom."""
    e = np.asarray(e_tot_eV, float)
    return float(np.max(np.abs(e - e[0])) * 1000.0 / n_atoms)


def seed_figures(time_ps: np.ndarray, e_tot_eV: np.ndarray) -> dict[str, float]:
    """The hand-made report's figures: energies and drifts in % of |E0|.

    These depend on the energy zero (atom reference energies make them tiny), so they are
    informational by default.
    """
    e = np.asarray(e_tot_eV, float)
    e0, e1 = float(e[0]), float(e[-1])
    duration = float(time_ps[-1] - time_ps[0]) if len(time_ps) > 1 else 0.0
    total = abs(e1 - e0) / abs(e0) * 100.0 if e0 else float("nan")
    return {
        "initial_energy_eV": e0,
        "final_energy_eV": e1,
        "total_drift_percent": total,
        "max_drift_percent": float(np.max(np.abs(e - e0)) / abs(e0) * 100.0) if e0 else float("nan"),
        "drift_rate_percent_per_ps": total / duration if duration > 0 else float("nan"),
    }


def drift_over_kinetic_std(time_ps: np.ndarray, e_tot_eV: np.ndarray, e_kin_eV: np.ndarray) -> float:
    """|fitted drift over the run| / σ(E_kin): drift against the natural energy fluctuation."""
    t = np.asarray(time_ps, float)
    if t.size < 3:
        return float("nan")
    slope = np.polyfit(t, np.asarray(e_tot_eV, float), 1)[0]
    sigma = float(np.std(e_kin_eV))
    return float(abs(slope) * np.ptp(t) / sigma) if sigma > 0 else float("nan")


def bond_deviation_A(positions0: np.ndarray, positions: np.ndarray, bonds: np.ndarray) -> float:
    """Largest |r_ij(t) − r_ij(0)| over the bonds, in Å."""
    if len(bonds) == 0:
        return 0.0
    d0 = np.linalg.norm(positions0[bonds[:, 0]] - positions0[bonds[:, 1]], axis=1)
    d = np.linalg.norm(positions[bonds[:, 0]] - positions[bonds[:, 1]], axis=1)
    return float(np.max(np.abs(d - d0)))


def force_accuracy(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Force R² over all components, MAE and RMSE (eV/Å). Arrays ``[n, 3]`` flattened."""
    p, r = np.ravel(pred), np.ravel(ref)
    ss_res = float(np.sum((p - r) ** 2))
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    return {
        "force_r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "force_mae_eV_per_A": float(np.mean(np.abs(p - r))),
        "force_rmse_eV_per_A": float(np.sqrt(np.mean((p - r) ** 2))),
    }


def _finite_energies(traj: Trajectory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Record times (ps), total and kinetic energies (eV) of the records with a finite energy."""
    t, e = traj.time_ps, traj.e_tot_eV
    ok = np.isfinite(e)
    return t[ok], e[ok], np.asarray(traj.e_kin_eV, float)[ok]


def energy_metrics(traj: Trajectory) -> dict[str, float]:
    """Every energy-conservation figure of a trajectory (empty when no energy is finite)."""
    t, e, ek = _finite_energies(traj)
    if not e.size:
        return {}
    n = traj.n_atoms
    out = seed_figures(t, e)
    out["drift_slope_meV_per_atom_per_ps"] = drift_slope_meV_per_atom_per_ps(t, e, n)
    out["drift_slope_stderr_meV_per_atom_per_ps"] = drift_slope_stderr_meV_per_atom_per_ps(t, e, n)
    out["max_energy_deviation_meV_per_atom"] = max_energy_deviation_meV_per_atom(e, n)
    out["drift_over_kinetic_std"] = drift_over_kinetic_std(t, e, ek)
    return out


#: Checks measured from a trajectory's energies after the run: each name's value is in
#: :func:`energy_metrics` (``drift_slope`` is the signed slope; its check compares ``|slope|``).
TRAJECTORY_METRICS: dict[str, Callable[[Trajectory], dict[str, float]]] = {
    "drift_slope_meV_per_atom_per_ps": energy_metrics,
    "max_energy_deviation_meV_per_atom": energy_metrics,
    "total_drift_percent": energy_metrics,
    "drift_over_kinetic_std": energy_metrics,
}
