"""The energy landscape of a molecule, model against oracle: conformers, torsion profiles,
harmonic frequencies and close contacts (the ``pes`` stage, :mod:`mdgate.stages.pes`).

* :mod:`~mdgate.pes.topology`: bonds, rotatable bonds and conformer embeddings (RDKit);
* :mod:`~mdgate.pes.reference`: the oracle's side (minima, scans, Hessian), cached on disk;
* :mod:`~mdgate.pes.measure`: the candidate's side and the figures the checks judge.
"""
