"""Optimizers for embedding tables that touch only the rows a batch used.

Duplicate ids are summed first (sort + segment sum), so each touched row is
updated once with its total gradient; this equals the dense-gradient update
(tests/test_sparse_optim.py) and avoids XLA scatter-add with many repeated
indices, which is very slow on GPU in jaxlib 0.10.2-0.11.0 (openxla/xla#46225).
Adagrad needs the summed gradient anyway (it squares it). Plain SGD on CPU
skips the sort: XLA:CPU's scatter-add is a serial loop for which duplicates
cost nothing, while its sort of a batch's ids costs ~10x the scatter.

Formulas are the PyTorch reference's (torch.optim.Adagrad and the reference's
row-wise Adagrad, FBGEMM's EXACT_ROWWISE_ADAGRAD): eps is added AFTER the square
root, not inside it as optax does. g is a row's gradient summed over the batch.
  sgd:              w -= lr * g
  adagrad:          a += g**2;                    w -= lr * g / (sqrt(a) + eps)
  rowwise_adagrad:  a_row += mean_d(g**2);        w -= lr * g / (sqrt(a_row) + eps)
For column-wise shards the row's mean runs over all its columns (a psum across
the shards holding them), so every shard of a row uses the same a_row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dlrm_jax.sharding import collectives

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


@dataclasses.dataclass(frozen=True)
class SparseOptimizer:
  name: str
  # A float, or a schedule step -> lr (dlrm_jax.optim.schedules) evaluated by ``lr_at``.
  learning_rate: float | Callable[[jax.Array], jax.Array]
  eps: float = 1e-10
  initial_accumulator: float = 0.0
  # None: dedupe unless this is SGD on CPU (see the module docstring).
  dedupe: bool | None = None

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"--optimizer={self.name!r}: must be one of {', '.join(OPTIMIZERS)}")

  def lr_at(self, step: jax.Array) -> float | jax.Array:
    """The learning rate of the update made at ``step`` (i32[], 0 for the first update)."""
    if callable(self.learning_rate):
      return self.learning_rate(step)
    return self.learning_rate

  def slot_floats_per_row(self, dim: int) -> int:
    return {"sgd": 0, "adagrad": dim, "rowwise_adagrad": 1}[self.name]

  def init_slots(self, table: jax.Array) -> dict[str, jax.Array]:
    """Optimizer state shaped like ``table`` (f32[rows, dim]); {} for SGD."""
    if self.name == "adagrad":
      return {"accumulator": jnp.full(table.shape, self.initial_accumulator, table.dtype)}
    if self.name == "rowwise_adagrad":
      return {"accumulator": jnp.full(table.shape[:1], self.initial_accumulator, table.dtype)}
    return {}

  def apply(
    self,
    table: jax.Array,
    slots: dict[str, jax.Array],
    rows: jax.Array,
    grads: jax.Array,
    valid: jax.Array,
    *,
    column_axis: str | None = None,
    full_dim: int | None = None,
    learning_rate: float | jax.Array | None = None,
  ):
    """Updates the touched rows of ``table`` in place.

    Args:
      table: f32[R, d] this device's shard.
      slots: its optimizer state.
      rows: i32[n] local rows; entries with ``valid`` False are ignored.
      grads: f32[n, d] gradients, possibly with repeated rows.
      column_axis: for column-wise shards, the mesh axis holding the other
        columns (row-wise Adagrad needs the whole row's mean square).
      full_dim: the unsharded embedding width (row-wise Adagrad's mean).
      learning_rate: this step's rate (f32[] or float, from ``lr_at``); None
        takes the constant ``self.learning_rate``.
    Returns:
      (table, slots) updated.
    """
    n = rows.shape[0]
    sentinel = table.shape[0]  # out of range: dropped by the scatters below
    rows = jnp.where(valid, rows, sentinel)
    lr = self.learning_rate if learning_rate is None else learning_rate
    if callable(lr):
      raise ValueError("a scheduled learning rate needs apply(..., learning_rate=lr_at(step))")
    dedupe = self.dedupe
    if dedupe is None:
      dedupe = self.name != "sgd" or jax.default_backend() != "cpu"
    if not dedupe:
      if self.name != "sgd":
        raise ValueError(f"{self.name} needs deduplicated gradients (dedupe=True)")
      return table.at[rows].add(-lr * grads, mode="drop"), slots
    unique, inverse = jnp.unique(rows, size=n, fill_value=sentinel, return_inverse=True)
    inverse = inverse.reshape(-1)
    summed = jax.ops.segment_sum(grads, inverse, num_segments=n)
    if self.name == "sgd":
      return table.at[unique].add(-lr * summed, mode="drop", indices_are_sorted=True), slots
    acc = slots["accumulator"]
    if self.name == "adagrad":
      new_acc = acc.at[unique].get(mode="fill", fill_value=0.0) + summed * summed
      step = summed / (jnp.sqrt(new_acc) + self.eps)
    else:
      square_sum = jnp.sum(summed * summed, axis=1)
      if column_axis is not None:
        square_sum = collectives.psum(square_sum, column_axis)
      mean_square = square_sum / (full_dim or table.shape[1])
      new_acc = acc.at[unique].get(mode="fill", fill_value=0.0) + mean_square
      step = summed / (jnp.sqrt(new_acc) + self.eps)[:, None]
    table = table.at[unique].add(-lr * step, mode="drop", indices_are_sorted=True)
    acc = acc.at[unique].set(new_acc, mode="drop", indices_are_sorted=True)
    return table, {"accumulator": acc}
