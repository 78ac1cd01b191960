"""Static descriptions of the model's embedding tables."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

POOLINGS = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """One embedding table: the vocabulary of one categorical feature.

  Attributes:
    name: the feature's name (C1..C26 for Criteo); used in error messages.
    rows: number of ids; valid ids are 0..rows-1.
    dim: embedding width.
    bag_size: most ids per example (1: one-hot); the feature's bag takes that
      many consecutive columns of the sparse batch (see ``id_offsets``).
    pooling: how a bag's rows combine into one vector: 'sum' or 'mean'
      (over the bag's valid ids; an empty bag pools to zeros).
  """

  name: str
  rows: int
  dim: int
  bag_size: int = 1
  pooling: str = "sum"

  def __post_init__(self):
    if self.rows < 1:
      raise ValueError(f"table {self.name}: rows must be >= 1, got {self.rows}")
    if self.dim < 1:
      raise ValueError(f"table {self.name}: dim must be >= 1, got {self.dim}")
    if self.bag_size < 1:
      raise ValueError(
        f"table {self.name}: --multi_hot_sizes gives it {self.bag_size} ids; must be >= 1"
      )
    if self.pooling not in POOLINGS:
      raise ValueError(f"--pooling={self.pooling!r}: must be one of {', '.join(POOLINGS)}")

  @property
  def init_bound(self) -> float:
    """The reference initialises rows U(-sqrt(1/rows), sqrt(1/rows))."""
    return math.sqrt(1.0 / self.rows)

  @property
  def bytes(self) -> int:
    return self.rows * self.dim * 4


def id_offsets(bag_sizes: Sequence[int]) -> list[int]:
  """First column of each feature's bag in the flat sparse batch i32[B, sum(bag_sizes)]."""
  out, total = [], 0
  for size in bag_sizes:
    out.append(total)
    total += int(size)
  return out


def table_specs(
  names: list[str],
  rows: list[int],
  dim: int,
  bag_sizes: Sequence[int] | None = None,
  pooling: str = "sum",
) -> tuple[TableSpec, ...]:
  """One TableSpec per feature; ``bag_sizes`` None = one id per feature."""
  if len(names) != len(rows):
    raise ValueError(f"{len(names)} feature names but {len(rows)} table sizes")
  bags = [1] * len(names) if bag_sizes is None else list(bag_sizes)
  if len(bags) != len(names):
    raise ValueError(f"--multi_hot_sizes has {len(bags)} sizes but there are {len(names)} features")
  return tuple(
    TableSpec(n, int(r), dim, int(L), pooling) for n, r, L in zip(names, rows, bags, strict=True)
  )
