"""Benchmarks of shortwan against hand-written baselines: ``python -m benchmarks``."""
