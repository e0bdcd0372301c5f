"""Analyses without training: aggregation graphs, receptive fields, claim verdicts and the claims report."""
