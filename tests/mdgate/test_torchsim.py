"""The TorchSim adapter: SevenNet-0 through sevenn's TorchSim ``ModelInterface`` (one batched call
per step) and through its ASE calculator (one call per molecule) gives the same energies, forces
and verdict. Both run in SevenNet's own environment (built once), in the model process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import write

from mdgate.config import GateConfig
from mdgate.md.neighbors import all_pairs
from mdgate.molecules import read_molecules
from mdgate.potentials import load
from mdgate.potentials.isolation import Isolation
from mdgate.potentials.remote import RemotePotential
from mdgate.runner import load_inputs, run_pipeline
from tests.models import quick

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ASE, TORCHSIM = EXAMPLES / "sevennet0", EXAMPLES / "sevennet0-torchsim"

pytestmark = pytest.mark.slow


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """All packaged molecules in one batch, as the engine passes them."""
    molecules = read_molecules()
    numbers = torch.as_tensor(np.concatenate([m.atoms.numbers for m in molecules]))
    positions = torch.as_tensor(np.concatenate([m.atoms.positions for m in molecules]))
    system_idx = torch.cat([torch.full((len(m.atoms),), k, dtype=torch.long) for k, m in enumerate(molecules)])
    return numbers, positions, system_idx, len(molecules)


def test_sevennet_through_torchsim_and_ase_agree() -> None:
    """SevenNet computes in float32. Its ASE calculator forms the edge vectors from ASE's float64
    positions, its TorchSim model from float32 ones: the same positions rounded to float32 first
    give the same forces to 1e-6 eV/Å (measured 1.0e-6), float64 ones to 2e-5 (the rounding of a
    5 Å coordinate, 5e-7 Å, times bond force constants of tens of eV/Å²).
    """
    numbers, positions, system_idx, n = batch()
    i, j = all_pairs(system_idx)
    ase, ts = (load(example, "cpu", isolation=Isolation()) for example in (ASE, TORCHSIM))
    try:
        assert isinstance(ase, RemotePotential) and isinstance(ts, RemotePotential)
        assert ase.uses_pairs is False and ts.uses_pairs is False  # both find their own neighbours
        assert ts.cutoff_A == pytest.approx(5.0) and ts.n_parameters == ase.n_parameters > 0
        rounded = positions.float().double()
        (e_ase, f_ase), (e_ts, f_ts) = (p(numbers, rounded, system_idx, n, i, j) for p in (ase, ts))
        assert torch.isfinite(f_ts).all() and float(f_ts.abs().max()) > 0.1
        assert float((f_ts - f_ase).abs().max()) < 1e-5, float((f_ts - f_ase).abs().max())
        assert float(((e_ts - e_ase) / e_ase.abs()).abs().max()) < 1e-6  # float32 energies of -50 to -150 eV
        (e_ase, f_ase), (e_ts, f_ts) = (p(numbers, positions, system_idx, n, i, j) for p in (ase, ts))
        assert float((f_ts - f_ase).abs().max()) < 5e-5, float((f_ts - f_ase).abs().max())
    finally:
        ase.close()
        ts.close()


def test_sevennet_through_torchsim_and_ase_reach_the_same_verdict(tmp_path: Path) -> None:
    two = tmp_path / "two.extxyz"
    for m in read_molecules()[:2]:
        atoms = m.atoms.copy()
        atoms.info["name"] = m.name
        write(two, atoms, format="extxyz", append=True)
    config = GateConfig.model_validate(quick({"md": {"n_steps": 200, "record_every": 10}, "molecules": str(two)}))
    verdicts = {}
    for example in (ASE, TORCHSIM):
        inputs = load_inputs(example, config, isolation=Isolation())
        try:
            result = run_pipeline(inputs, config, inputs.potential.meta, source=example.name)
        finally:
            inputs.potential.close()
        verdicts[example.name] = result
    ase, ts = verdicts[ASE.name], verdicts[TORCHSIM.name]
    assert ase.verdict == ts.verdict and ase.decided_by == ts.decided_by, (ase.reason, ts.reason)
    drift = {name: [m.summary.get("drift_slope_meV_per_atom_per_ps") for m in r.molecules]
             for name, r in verdicts.items()}
    np.testing.assert_allclose(drift[ASE.name], drift[TORCHSIM.name], rtol=1e-2, atol=1e-3)
