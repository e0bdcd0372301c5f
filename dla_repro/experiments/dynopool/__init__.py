"""DynOPool, "Pooling Revisited: Your Receptive Field is Suboptimal" (Jang, Chu, Kim, Han, CVPR 2022, arXiv 2205.15254).

* :mod:`.resizing` -- the toy experiments (Tables 1-2): hand-designed pooling vs
  DynOPool vs Shape Adaptor (arXiv 2008.00892) on the data variants
  ``original`` / ``stretch_v`` / ``tile`` / ``large`` (``dynopool/06_dynopool``).
"""
