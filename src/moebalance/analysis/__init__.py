"""Analysis: utilization metrics (metrics.py), held-out routing capture (utilization.py),
the cross-variant comparison with its statistics (compare.py) and its figures (figures.py)."""
