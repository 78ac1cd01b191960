"""Feature interactions of DLRM as pure functions of [bottom_out, emb_1..emb_T]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

INTERACTIONS = ("dot", "cat")


def _lower_triangle(num_features: int, itself: bool) -> tuple[np.ndarray, np.ndarray]:
  """Index pairs (i, j), j < i (j <= i with ``itself``), row by row as the reference."""
  offset = 1 if itself else 0
  li = np.array([i for i in range(num_features) for _ in range(i + offset)], np.int32)
  lj = np.array([j for i in range(num_features) for j in range(i + offset)], np.int32)
  return li, lj


def dot_interaction(bottom: jax.Array, emb: jax.Array, itself: bool = False) -> jax.Array:
  """Pairwise dot products, as the reference's ``interact_features('dot')``.

  Args:
    bottom: f32[B, D] bottom MLP output.
    emb: f32[B, T, D] embeddings.
    itself: keep the diagonal (each vector's dot product with itself).
  Returns:
    f32[B, D + P] with P = F(F-1)/2 (F(F+1)/2 with ``itself``), F = T + 1.
  """
  features = jnp.concatenate([bottom[:, None, :], emb], axis=1)
  gram = jnp.einsum("bid,bjd->bij", features, features)
  li, lj = _lower_triangle(features.shape[1], itself)
  return jnp.concatenate([bottom, gram[:, li, lj]], axis=1)


def cat_interaction(bottom: jax.Array, emb: jax.Array) -> jax.Array:
  """Concatenation: f32[B, D] and f32[B, T, D] -> f32[B, D + T*D]."""
  return jnp.concatenate([bottom, emb.reshape(emb.shape[0], -1)], axis=1)


def interaction_width(kind: str, num_tables: int, dim: int, itself: bool = False) -> int:
  """Width of the top MLP's input for ``kind``."""
  f = num_tables + 1
  if kind == "dot":
    return dim + (f * (f + 1) // 2 if itself else f * (f - 1) // 2)
  if kind == "cat":
    return dim * f
  raise ValueError(f"--interaction={kind!r}: must be one of {', '.join(INTERACTIONS)}")


def interact(kind: str, bottom: jax.Array, emb: jax.Array, itself: bool = False) -> jax.Array:
  if kind == "dot":
    return dot_interaction(bottom, emb, itself)
  if kind == "cat":
    return cat_interaction(bottom, emb)
  raise ValueError(f"--interaction={kind!r}: must be one of {', '.join(INTERACTIONS)}")
