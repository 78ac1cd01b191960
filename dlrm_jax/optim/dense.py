"""Optax transformations for the MLPs that follow the PyTorch reference's Adagrad exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

LearningRate = float | Callable[[jax.Array], jax.Array]


class ReferenceAdagradState(NamedTuple):
  """Running sum of squared gradients, shaped like the params (the field name is optax's)."""

  sum_of_squares: optax.Updates


def scale_by_reference_adagrad(
  eps: float = 1e-10, initial_accumulator: float = 0.0
) -> optax.GradientTransformation:
  """``a += g*g; u = g / (sqrt(a) + eps)``: torch.optim.Adagrad's direction (eps after the root).

  optax.scale_by_rss computes ``g / sqrt(a + eps)`` instead (eps inside the root),
  which damps small first gradients far more than the reference does.
  """

  def init(params):
    return ReferenceAdagradState(
      jax.tree.map(lambda p: jnp.full(p.shape, initial_accumulator, p.dtype), params)
    )

  def update(updates, state, params=None):
    del params
    acc = jax.tree.map(lambda a, g: a + g * g, state.sum_of_squares, updates)
    out = jax.tree.map(lambda g, a: g / (jnp.sqrt(a) + eps), updates, acc)
    return out, ReferenceAdagradState(acc)

  return optax.GradientTransformation(init, update)


def dense_optimizer(
  name: str,
  learning_rate: LearningRate,
  *,
  eps: float = 1e-10,
  initial_accumulator: float = 0.0,
) -> optax.GradientTransformation:
  """The MLPs' optimizer: SGD, or reference Adagrad (also for row-wise Adagrad on the tables).

  ``learning_rate`` is a float or a schedule ``step -> lr`` that optax evaluates
  on its own update count, which equals TrainState.step (both start at 0 and
  advance once per train step). The opt_state tree equals optax.adagrad's.
  """
  if name == "sgd":
    return optax.sgd(learning_rate)
  direction = scale_by_reference_adagrad(eps, initial_accumulator)
  return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))
