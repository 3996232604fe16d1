"""Benchmarks, kept apart from the services they measure (``python -m benchmarks.<name>``).

Each measures side by side in one run and reports ratios next to absolute figures, naming the hardware
(:func:`vitrine.measure.describe_hardware`) and the weights every figure used. Results and commands are
recorded in docs/BENCHMARKS.md.
"""
