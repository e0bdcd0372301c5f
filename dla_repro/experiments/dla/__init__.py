"""Deep Layer Aggregation (Yu, Wang, Shelhamer, Darrell, CVPR 2018, arXiv 1707.06484).

One module per notebook section:

* :mod:`.architecture` and :mod:`.graph` -- §3-4.1: the ten variants against the
  paper's table, aggregation graphs traced from the models (``dla/01_architecture``);
* :mod:`.classification` -- §4.1, §5.1-5.2: aggregation / residual node / node kernel
  ablations (``dla/02_classification``);
* :mod:`.segmentation` -- §4.2, §5.3: DLA-Up vs an FCN decoder (``dla/03_segmentation``);
* :mod:`.boundaries` -- §4.2, §5.4: boundary detection (``dla/04_boundaries``);
* :mod:`.reference` -- the paper's (and timm's) reference numbers.
"""
