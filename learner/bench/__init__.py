"""Benchmarks: the learner against a naive reference, peak memory, broadcast, end to end.

`naive.py` is the reference the optimized learner is measured (and tested) against.
"""
