"""ParseNet (Liu, Rabinovich, Berg, 2015, arXiv 1506.04579).

* :mod:`.global_context` -- §3: receptive fields, feature norms, global context ×
  early/late fusion × L2 normalisation (``parsenet/05_global_context``).
"""
