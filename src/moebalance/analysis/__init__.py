"""Analysis: utilization metrics (metrics.py), the utilization stage that counts held-out
routing (utilization.py, measuring balance with moebalance.balance), the cross-variant
comparison with its statistics (compare.py) and its figures (figures.py)."""
