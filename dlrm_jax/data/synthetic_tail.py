"""--synthetic_tail: rare, signal-free ids mixed into the built-in data, so table capacity matters.

With tail fraction F > 0, every present categorical value of a generated row is,
with probability F, replaced by a *tail* value: one drawn uniformly from that
feature's pool of about ``F x rows`` fresh values (distinct from the feature's
Zipf vocabulary). A pool value is therefore expected about once in the whole
file (Poisson(1)-like counts: most distinct ids of a table are seen once or a
few times), while the Zipf head, whose teacher vectors are unchanged, carries
all the signal: a tail value adds nothing to the teacher's logit. F = 0 draws
nothing here, so the data stays byte-identical to the generator without it.

Random streams (never used by the F = 0 generator): ``[seed, 3]`` the pools,
``[seed, 4, chunk]`` the tail draws of a chunk, ``[seed, 5]`` the calibration
sample's tail mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

POOL_STREAM, ROWS_STREAM, CALIBRATION_STREAM = 3, 4, 5
# Pool values per expected tail draw: 1 makes the expected count of a pool value about 1
# (fewer for features often missing), so about 37% of a pool is never drawn.
_POOL_PER_DRAW = 1.0


def pool_size(num_rows: int, tail: float) -> int:
  """Fresh values each feature's tail draws from: about one per expected tail draw."""
  return max(1, math.ceil(_POOL_PER_DRAW * tail * num_rows))


def pools(seed: int, head_values: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
  """Per feature ``size`` distinct uint32 values absent from its head values (uint32[size])."""
  rng = np.random.default_rng([seed, POOL_STREAM])
  out = []
  for head in head_values:
    found = np.zeros(0, dtype=np.uint32)
    while found.size < size:
      draw = rng.integers(0, 2**32, size=2 * size + 16, dtype=np.uint64).astype(np.uint32)
      merged = np.concatenate([found, draw[~np.isin(draw, head)]])
      _, first = np.unique(merged, return_index=True)
      found = merged[np.sort(first)]  # first occurrences, in draw order
    out.append(found[:size])
  return out


def tail_mask(rng: np.random.Generator, tail: float, sparse_missing: np.ndarray) -> np.ndarray:
  """bool[n, T]: which present values become tail values."""
  return (rng.random(sparse_missing.shape) < tail) & ~sparse_missing


def draw(
  rng: np.random.Generator, tail: float, sparse_missing: np.ndarray, size: int
) -> np.ndarray:
  """int64[n, T]: the pool index of each tail value, -1 where the value stays a head value."""
  mask = tail_mask(rng, tail, sparse_missing)
  index = rng.integers(0, size, size=sparse_missing.shape, dtype=np.int64)
  return np.where(mask, index, -1)
