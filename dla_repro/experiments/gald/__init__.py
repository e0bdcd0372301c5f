"""GALD, "Global Aggregation then Local Distribution in Fully Convolutional Networks" (Li, Zhang, You, Yang, Yang,
Tong, BMVC 2019, arXiv 1909.07229).

* :mod:`.local_distribution` -- FCN vs + GA vs + GA + LD for four GA modules, object-size IoU, boundary-band
  accuracy and the LD masks (``gald/07_gald``).
"""
