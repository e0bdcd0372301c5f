"""The DLA paper's reference numbers for the classifiers: paper data, beside the experiments that use it.

Parameters (millions) and GMACs at 224×224 as listed by timm, and the ImageNet
top-1 of the authors' weights (ucbdrive/dla) as evaluated by timm
(``results/results-imagenet.csv`` and the benchmark CSVs of
huggingface/pytorch-image-models).  The top-1 figure of the paper itself
(arXiv 1707.06484 §5.1) could not be read: ``top1_paper`` is :data:`NA` and the
notebooks print "paper: n/a" there rather than a number from elsewhere.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["NA", "REFERENCE", "REFERENCE_SOURCE"]

#: A number the source does not give.
NA = "n/a"

#: variant → ``params_m``, ``gmacs`` (224×224), ``top1_timm``, ``top1_paper``.
REFERENCE: Dict[str, Dict[str, Any]] = {
    "dla34": dict(params_m=15.74, gmacs=3.07, top1_timm=74.63, top1_paper=NA),
    "dla46_c": dict(params_m=1.30, gmacs=0.58, top1_timm=64.88, top1_paper=NA),
    "dla46x_c": dict(params_m=1.07, gmacs=0.54, top1_timm=66.01, top1_paper=NA),
    "dla60x_c": dict(params_m=1.32, gmacs=0.59, top1_timm=67.93, top1_paper=NA),
    "dla60": dict(params_m=22.04, gmacs=4.26, top1_timm=77.04, top1_paper=NA),
    "dla60x": dict(params_m=17.35, gmacs=3.54, top1_timm=78.23, top1_paper=NA),
    "dla102": dict(params_m=33.27, gmacs=7.19, top1_timm=78.02, top1_paper=NA),
    "dla102x": dict(params_m=26.31, gmacs=5.89, top1_timm=78.52, top1_paper=NA),
    "dla102x2": dict(params_m=41.28, gmacs=9.34, top1_timm=79.45, top1_paper=NA),
    "dla169": dict(params_m=53.39, gmacs=11.6, top1_timm=78.70, top1_paper=NA),
}

#: Where :data:`REFERENCE` comes from (shown under the tables that use it).
REFERENCE_SOURCE = "timm results-imagenet.csv / benchmark CSVs; paper table (arXiv 1707.06484 §5.1) not found"
