"""dla_repro: a reproducible replication of Deep Layer Aggregation, ParseNet,
DynOPool and GALD on timm building blocks.

Importing the package registers the ``dlarepro_*`` models in timm's registry.
"""

__version__ = "0.1.0"
from . import models  # noqa: F401  (registers dlarepro_* in timm)
