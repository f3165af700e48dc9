"""Reproducible speed and memory comparisons, printed as tables (``psa bench``)."""
