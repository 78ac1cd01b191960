"""Feature interactions of DLRM as pure functions of [bottom_out, emb_1..emb_T]."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

INTERACTIONS = ("dot", "cat", "dcn", "dcnv2")  # dcn, dcnv2: Flax modules in cross.py


@functools.cache
def _triangle_indices(num_features: int, itself: bool) -> tuple[np.ndarray, np.ndarray]:
  """Flat positions of the kept pairs, and each position's pair (P = none).

  Pairs (i, j) with j < i (j <= i with ``itself``), row by row as the
  reference's li/lj. Returns (pairs i32[P] into F*F, inverse i32[F*F] into P+1).
  """
  offset = 1 if itself else 0
  pairs = np.array(
    [i * num_features + j for i in range(num_features) for j in range(i + offset)], np.int32
  )
  inverse = np.full(num_features * num_features, len(pairs), np.int32)
  inverse[pairs] = np.arange(len(pairs), dtype=np.int32)
  return pairs, inverse


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _lower_triangle(gram: jax.Array, num_features: int, itself: bool) -> jax.Array:
  """f32[B, F, F] -> f32[B, P]: the kept pairs of the Gram matrix."""
  pairs, _ = _triangle_indices(num_features, itself)
  return gram.reshape(gram.shape[0], -1)[:, pairs]


def _lower_triangle_fwd(gram, num_features, itself):
  return _lower_triangle(gram, num_features, itself), None


def _lower_triangle_bwd(num_features, itself, _, dz):
  # Autodiff would transpose the gather into a scatter-add into zeros, which
  # XLA:CPU runs as a serial loop after a broadcast; the positions are
  # distinct, so a gather from [dz, 0] gives the same cotangent.
  _, inverse = _triangle_indices(num_features, itself)
  padded = jnp.concatenate([dz, jnp.zeros_like(dz[:, :1])], axis=1)
  return (padded[:, inverse].reshape(dz.shape[0], num_features, num_features),)


_lower_triangle.defvjp(_lower_triangle_fwd, _lower_triangle_bwd)


def dot_interaction(bottom: jax.Array, emb: jax.Array, itself: bool = False) -> jax.Array:
  """Pairwise dot products, as the reference's ``interact_features('dot')``.

  Args:
    bottom: f32[B, D] bottom MLP output.
    emb: f32[B, T, D] embeddings.
    itself: keep the diagonal (each vector's dot product with itself).
  Returns:
    f32[B, D + P] with P = F(F-1)/2 (F(F+1)/2 with ``itself``), F = T + 1.
  """
  features = jnp.concatenate([bottom[:, None, :], emb.astype(bottom.dtype)], axis=1)
  # f32: HIGHEST, so GPUs do not round the inputs to TF32 (the reference does not).
  precision = lax.Precision.HIGHEST if features.dtype == jnp.float32 else None
  gram = jnp.einsum("bid,bjd->bij", features, features, precision=precision)
  return jnp.concatenate([bottom, _lower_triangle(gram, features.shape[1], itself)], axis=1)


def cat_interaction(bottom: jax.Array, emb: jax.Array) -> jax.Array:
  """Concatenation: f32[B, D] and f32[B, T, D] -> f32[B, D + T*D]."""
  return jnp.concatenate([bottom, emb.astype(bottom.dtype).reshape(emb.shape[0], -1)], axis=1)


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
