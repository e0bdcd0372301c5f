"""What the notebooks train, measure and judge: the shared study protocol, then one home per paper.

* :mod:`.study` -- the protocol every experiment follows (data, trial table,
  trials × seeds, evaluation hook, summary, pre-declared claims, claims table);
* :mod:`.calibration` -- the synthetic data's calibration on the plain baseline;
* ``dla/``, ``parsenet/`` (``dynopool/``, ``gald/`` next) -- per paper: its
  trials, evaluation, claims, figures and reference numbers, one module per
  notebook section.

The notebooks stay thin: they call these modules.  Models never import from
here; the generic layers (``engine``, ``metrics``, ``data``, ``kernels``,
``analysis``, ``bench``) know nothing of it.
"""
