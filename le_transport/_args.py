"""Command-line argument types shared by the ``le-transport`` console script and the
project's own runners (``python -m benchmarks``, ``python -m fuzz``): each refuses what it
cannot take with a short usage error (argparse exits 2), never a traceback."""

from __future__ import annotations

import argparse

__all__ = ["positive_int"]


def positive_int(text: str) -> int:
    """A whole number >= 1, for argparse (0 and negatives are refused: a count of 0 often
    reads as "the default" where it is falsy, and a negative one as nothing to do)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value
