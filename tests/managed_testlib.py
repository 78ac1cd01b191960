"""References for the --id_mapping=managed tests, written from the definitions; nothing of ours.

``RefTable`` follows sharding/managed.py's docstring: new ids in ascending uint32
order take the free rows in row order (row 0, the unknown row, never), then the
row the policy ranks lowest among rows not used this step (lru: least recent step
of use; lfu: count * decay ** (steps since last use); ties: the lowest row).
``fresh_row`` is table_init.row_values' hash, written again from its formula.
"""

from __future__ import annotations

import collections
import math

import numpy as np

M32 = 0xFFFFFFFF


# ---- An independent NumPy initialiser: table_init.row_values from its formula. ----


def _fmix(h: int) -> int:
  h ^= h >> 16
  h = (h * 0x85EBCA6B) & M32
  h ^= h >> 13
  h = (h * 0xC2B2AE35) & M32
  return h ^ (h >> 16)


def fresh_row(seed, table: int, raw_id: int, rows: int, dim: int) -> np.ndarray:
  """f32[dim]: U(-1, 1) from the (seed, table, id, column) hash, times sqrt(1 / rows).

  seed: the two uint32 words of the tables' seed (TrainState.managed["seed"]).
  """
  seed = [int(w) for w in seed]
  h = _fmix(((table * 0x9E3779B1) & M32) ^ seed[0])
  h = _fmix(h ^ (((raw_id * 0x85EBCA6B) + seed[1]) & M32))
  out = []
  for c in range(dim):
    bits = _fmix(h ^ ((c * 0xC2B2AE35 + 0x27D4EB2F) & M32))
    out.append(np.float32(bits >> 8) * np.float32(2.0 / (1 << 24)) - np.float32(1.0))
  return np.asarray(out, np.float32) * np.float32(math.sqrt(1.0 / rows))


def owner_hash(raw_id: int, salt: int) -> int:
  """The hash that picks an id's owner among a table's shards: fmix32(id ^ salt)."""
  return _fmix(raw_id ^ salt)


# ---- The reference map of one table, on one device. ----


class RefTable:
  """id -> row of one managed table with ``capacity`` rows for ids, rows first, first + 1, ...

  One device: first = 1 (row 0 is the unknown row). A model shard's part of a table
  is one too, over the ids that shard owns, in its local rows.
  """

  def __init__(self, capacity: int, policy: str = "lru", decay: float = 1.0, first: int = 1):
    self.capacity, self.policy, self.decay = capacity, policy, np.float32(decay)
    self.first = first
    self.row_of: dict[int, int] = {}
    self.id_of: dict[int, int] = {}
    self.last: dict[int, int] = {}
    self.count: dict[int, np.float32] = {}
    self.next_free = first
    self.inserted = self.evicted = self.unplaced = 0

  def _decayed(self, row: int, step: int) -> np.float32:
    # f32 like the device; with decay 0.5 every factor is a power of two, so exact.
    return np.float32(self.count[row] * self.decay ** (step - self.last[row]))

  def _victim(self, step: int) -> int | None:
    rows = [r for r in self.id_of if self.last[r] != step]
    if not rows:
      return None
    if self.policy == "lru":
      return min(rows, key=lambda r: (self.last[r], r))
    return min(rows, key=lambda r: (self._decayed(r, step), r))

  def step(self, ids, step: int) -> list[int]:
    """Applies one step's kept ids; returns the ids that got a fresh row."""
    uses = collections.Counter(int(x) for x in ids)
    for x in uses:
      if x in self.row_of:
        r = self.row_of[x]
        self.count[r] = np.float32(self._decayed(r, step) + np.float32(uses[x]))
        self.last[r] = step
    fresh = []
    for x in sorted(x for x in uses if x not in self.row_of):
      if self.next_free < self.first + self.capacity:
        r = self.next_free
        self.next_free += 1
      else:
        r = self._victim(step)
        if r is None:
          self.unplaced += 1
          continue
        del self.row_of[self.id_of[r]]
        self.evicted += 1
      self.row_of[x], self.id_of[r] = r, x
      self.last[r], self.count[r] = step, np.float32(uses[x])
      self.inserted += 1
      fresh.append(x)
    return fresh
