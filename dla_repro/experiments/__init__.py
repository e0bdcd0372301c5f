"""What each notebook trains and draws, one module per notebook (paper section).

The notebooks stay thin: they call these functions. Models never import from
here; ``engine`` knows nothing of it.
"""
