"""Helpers of ``experiments/classification_benchmark.py``: data sets, models, methods, metrics, report."""
