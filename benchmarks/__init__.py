"""Benchmarks: what the transport costs, side by side with raw aiohttp and the usual wrappers.

Run ``python -m benchmarks run`` (see benchmarks/README.md). Nothing here is imported by the
library; tests/test_benchmarks.py runs every part once at its smallest size.
"""
