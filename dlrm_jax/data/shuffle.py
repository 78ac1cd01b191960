"""A seeded permutation of [0, n) evaluated at any positions in O(positions) memory.

The training loader's epoch order: row = permutation(position), computed per batch, so no
table of n row indices ever exists (Criteo Terabyte: 4 billion rows, 32 GB as int64).
A balanced Feistel network on the smallest even-bit domain 2^(2h) >= n is a bijection of that
domain; "cycle walking" (apply it again while the result is >= n) restricts it to a bijection of
[0, n), needing under 4 applications on average since 2^(2h) < 4n.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
  """splitmix64's finaliser of x ^ key: u64[k] -> u64[k], every input bit moves every output bit."""
  z = x ^ key
  z = (z ^ (z >> np.uint64(30))) * _M1
  z = (z ^ (z >> np.uint64(27))) * _M2
  return z ^ (z >> np.uint64(31))


class Permutation:
  """A bijection of [0, n) drawn from `seed` (anything np.random.default_rng takes)."""

  def __init__(self, n: int, seed: int | Sequence[int]) -> None:
    if n < 1:
      raise ValueError(f"a permutation needs n >= 1, got {n}")
    self.n = int(n)
    bits = max(2, (self.n - 1).bit_length())
    self.half = np.uint64((bits + 1) // 2)
    self.mask = np.uint64((1 << int(self.half)) - 1)
    self.keys = np.random.default_rng(seed).integers(0, 2**64, size=ROUNDS, dtype=np.uint64)

  def _feistel(self, x: np.ndarray) -> np.ndarray:
    left, right = x >> self.half, x & self.mask
    for key in self.keys:
      left, right = right, left ^ (_mix(right, key) & self.mask)
    return (left << self.half) | right

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    """int[k] positions in [0, n) -> int64[k] their rows (distinct positions, distinct rows)."""
    positions = np.asarray(positions)
    if positions.size and (positions.min() < 0 or positions.max() >= self.n):
      raise ValueError(f"positions must lie in [0, {self.n})")
    out = self._feistel(positions.astype(np.uint64))
    walk = np.flatnonzero(out >= np.uint64(self.n))
    while walk.size:
      out[walk] = self._feistel(out[walk])
      walk = walk[out[walk] >= np.uint64(self.n)]
    return out.astype(np.int64)
