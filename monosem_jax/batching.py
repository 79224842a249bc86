"""Fixed-size batches: the last one padded, so every batch has one shape and compiles once.

The padding repeats the last real row (real data, so nothing downstream sees an out-of-range
token or a NaN); callers trim the padded rows from the results or mask them with `valid_B`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def pad_rows(x_N: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """(x padded to `size` rows by repeating its last row, the real row count N).

    x_N has 1 <= N <= size rows (any trailing shape); with N == size it is returned as is.
    """
    n = x_N.shape[0]
    if n < size:
        x_N = np.concatenate([x_N, np.repeat(x_N[-1:], size - n, 0)])
    return x_N, n


def valid_rows(n: int, size: int) -> np.ndarray:
    """Bool [size]: the first n rows are real, the rest padding."""
    return np.arange(size) < n


def fixed_batches(x_N: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """(first row, rows first..first+size padded to `size` by `pad_rows`, real rows) per batch."""
    for first in range(0, x_N.shape[0], size):
        batch, n = pad_rows(x_N[first : first + size], size)
        yield first, batch, n
