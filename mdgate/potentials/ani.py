"""ANI-1x (Smith et al., J. Chem. Phys. 148, 241733, 2018) from the files bundled in ``torchani``.

An ensemble of 8 networks trained on ωB97X/6-31G(d) energies, for H, C, N and O, with a 5.2 Å
radial cutoff; energies in Hartree, positions in Å. ``torchani==2.2.4`` ships the NeuroChem files
under ``torchani/resources/ani-1x_8x`` but an empty ``ani-1x_8x.info``, so
``torchani.models.ANI1x()`` tries to download the model zoo; here the ensemble is built from the
bundled files with ``torchani.neurochem`` (``Constants``, ``load_sae``, ``load_model_ensemble``),
offline.

Two loaders, for the two adapters (``examples/ani1x/``):

- :func:`load_ani1x`: the torch module, for ``framework: ani`` (one batched call per MD step);
- :func:`make_calculator`: torchani's ASE calculator around the same module, for ``framework: ase``
  (one call per molecule).

torchani imports ``pkg_resources`` (``setuptools<82``) and ``lark`` (``lark-parser``): ``mdgate[ani]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from mdgate.errors import ModelLoadError

#: The NeuroChem files of ANI-1x inside the torchani package.
ANI1X_RESOURCES = "resources/ani-1x_8x"
#: The AEV constants, self atomic energies and network folders of that ensemble.
_CONSTANTS = "rHCNO-5.2R_16-3.5A_a4-8.params"
_SAE = "sae_linfit.dat"
_NETWORKS = "train"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _torchani() -> Any:
    """``import torchani`` (its import warns about pkg_resources, cuaev and lark's sre_parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchani
            import torchani.neurochem
    except ImportError as e:
        raise ModelLoadError(f"ANI needs torchani: pip install 'mdgate[ani]' ({e})") from e
    return torchani


def resource_folder(resource_dir: str | Path | None = None) -> Path:
    """The folder of the ANI-1x NeuroChem files (default: the one bundled in torchani).

    Raises:
        ModelLoadError: a file of the ensemble is missing.
    """
    folder = Path(resource_dir) if resource_dir is not None else Path(_torchani().__file__).parent / ANI1X_RESOURCES
    for name in (_CONSTANTS, _SAE, f"{_NETWORKS}0/networks"):
        if not (folder / name).exists():
            raise ModelLoadError(f"ANI-1x files incomplete: {folder / name} is missing")
    return folder


def load_ani1x(model_index: int | None = None, dtype: str = "float32", device: str = "cpu",
               resource_dir: str | None = None) -> torch.nn.Module:
    """ANI-1x as a torchani module taking atomic numbers (``periodic_table_index=True``).

    Args:
        model_index: one network of the ensemble (0-7), or ``None`` for the 8-network mean.
        dtype: ``float32`` or ``float64``.
        device: where the module lives.
        resource_dir: a folder with the NeuroChem files (default: torchani's bundled ones).

    Returns:
        ``module((species [S, A], coordinates_A [S, A, 3])).energies`` in Hartree, ``[S]``;
        padding atoms have species ``-1``.

    Raises:
        ModelLoadError: torchani missing, files missing, or a bad argument.
    """
    torchani = _torchani()
    from torchani.models import BuiltinEnsemble, BuiltinModel

    if dtype not in _DTYPES:
        raise ModelLoadError(f"load_ani1x: dtype = {dtype!r}; use one of {sorted(_DTYPES)}")
    folder = resource_folder(resource_dir)
    n_networks = len(list(folder.glob(f"{_NETWORKS}[0-9]*")))
    if model_index is not None and not 0 <= model_index < n_networks:
        raise ModelLoadError(f"load_ani1x: model_index = {model_index}; the ensemble has {n_networks} networks")
    neurochem = torchani.neurochem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        consts = neurochem.Constants(str(folder / _CONSTANTS))
        shifter, sae = neurochem.load_sae(str(folder / _SAE), return_dict=True)
        prefix = str(folder / _NETWORKS)
        if model_index is None:
            networks = neurochem.load_model_ensemble(consts.species, prefix, n_networks)
            cls = BuiltinEnsemble
        else:
            networks = neurochem.load_model(consts.species, f"{prefix}{model_index}/networks")
            cls = BuiltinModel
    model = cls(torchani.SpeciesConverter(consts.species), torchani.AEVComputer(**consts), networks, shifter,
                consts.species_to_tensor, consts, sae, True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device=torch.device(device), dtype=_DTYPES[dtype]).eval()


def make_calculator(model_index: int | None = None, dtype: str = "float64", device: str = "cpu",
                    resource_dir: str | None = None) -> Any:
    """ANI-1x as torchani's ASE calculator (energies in eV, forces in eV/Å, one molecule a call).

    Arguments as :func:`load_ani1x`.
    """
    model = load_ani1x(model_index, dtype, device, resource_dir)
    return _torchani().ase.Calculator(model.species, model)
