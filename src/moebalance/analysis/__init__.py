"""Analysis: utilization metrics (metrics.py), held-out routing capture (routing_capture.py)
and the utilization stage that counts it (utilization.py), the cross-variant comparison with
its statistics (compare.py) and its figures (figures.py)."""
