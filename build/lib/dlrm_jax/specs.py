"""Static descriptions of the model's embedding tables."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """One embedding table: the vocabulary of one categorical feature.

  Attributes:
    name: the feature's name (C1..C26 for Criteo); used in error messages.
    rows: number of ids; valid ids are 0..rows-1.
    dim: embedding width.
  """

  name: str
  rows: int
  dim: int

  def __post_init__(self):
    if self.rows < 1:
      raise ValueError(f"table {self.name}: rows must be >= 1, got {self.rows}")
    if self.dim < 1:
      raise ValueError(f"table {self.name}: dim must be >= 1, got {self.dim}")

  @property
  def init_bound(self) -> float:
    """The reference initialises rows U(-sqrt(1/rows), sqrt(1/rows))."""
    return math.sqrt(1.0 / self.rows)

  @property
  def bytes(self) -> int:
    return self.rows * self.dim * 4


def table_specs(names: list[str], rows: list[int], dim: int) -> tuple[TableSpec, ...]:
  if len(names) != len(rows):
    raise ValueError(f"{len(names)} feature names but {len(rows)} table sizes")
  return tuple(TableSpec(n, int(r), dim) for n, r in zip(names, rows, strict=True))
