"""Analyses without training, knowing no paper: claim verdicts (``claims``), the claims report (``report``),
receptive fields (``receptive_field``), figures of small-pattern scores and spatial masks
(``small_patterns_plots``)."""
