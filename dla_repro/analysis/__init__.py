"""Analyses of model objects (no training): e.g. the aggregation graph of a DLA."""
