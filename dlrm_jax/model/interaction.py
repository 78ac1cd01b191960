"""Feature interactions of DLRM as pure functions of [bottom_out, emb_1..emb_T]."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlrm_jax.model import policy

INTERACTIONS = ("dot", "cat", "dcn", "dcnv2")  # dcn, dcnv2: Flax modules in cross.py


@functools.cache
def _pair_indices(num_features: int, itself: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Where the kept pairs are in the flat F*F Gram matrix, and back.

  Pairs (i, j) with j < i (j <= i with ``itself``), row by row as the
  reference's li/lj. Returns (pairs i32[P] into F*F; symmetric i32[F*F] into
  P+1, the pair of position (i, j) or of (j, i), P (a zero) where neither is
  kept; diagonal f32[F*F], 2 on the diagonal and 1 elsewhere).
  """
  offset = 1 if itself else 0
  kept = [(i, j) for i in range(num_features) for j in range(i + offset)]
  pairs = np.array([i * num_features + j for i, j in kept], np.int32)
  symmetric = np.full((num_features, num_features), len(kept), np.int32)
  for p, (i, j) in enumerate(kept):
    symmetric[i, j] = symmetric[j, i] = p
  diagonal = 1.0 + np.eye(num_features, dtype=np.float32)
  return pairs, symmetric.reshape(-1), diagonal.reshape(-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gram_pairs(features: jax.Array, itself: bool, dtype) -> jax.Array:
  """f32[B, F, D] -> f32[B, P]: the kept pairs' dot products, ``dtype`` operands (policy.py)."""
  pairs, _, _ = _pair_indices(features.shape[1], itself)
  x = features.astype(dtype)
  gram = jnp.einsum("bid,bjd->bij", x, x, **policy.dot_kwargs(dtype))
  return gram.reshape(gram.shape[0], -1)[:, pairs]


def _gram_pairs_fwd(features, itself, dtype):
  return _gram_pairs(features, itself, dtype), features


def _gram_pairs_bwd(itself, dtype, features, dz):
  # d(x_i . x_j) reaches x_i as dz_ij x_j and x_j as dz_ij x_i, so the
  # cotangent is S @ X with S the symmetric matrix of the pairs' dz (twice dz
  # on a kept diagonal). One batched matmul, where autodiff of the einsum runs
  # two and adds them, and a gather from [dz, 0], where autodiff of the
  # triangle would scatter-add into zeros (a serial loop on XLA:CPU).
  b, f, _ = features.shape
  _, symmetric, diagonal = _pair_indices(f, itself)
  padded = jnp.concatenate([dz, jnp.zeros_like(dz[:, :1])], axis=1)
  s = padded[:, symmetric]
  if itself:
    s = s * diagonal.astype(s.dtype)
  # Operands in the operand dtype, so that the backward dot runs as the forward one
  # (policy.py); its f32 result is returned unrounded: these are the embedding rows'
  # and the bottom MLP's gradients.
  s = s.reshape(b, f, f).astype(dtype)
  ds = jnp.einsum("bij,bjd->bid", s, features.astype(dtype), **policy.dot_kwargs(dtype))
  return (ds.astype(features.dtype),)


_gram_pairs.defvjp(_gram_pairs_fwd, _gram_pairs_bwd)


def dot_interaction(
  bottom: jax.Array, emb: jax.Array, itself: bool = False, dtype=jnp.float32
) -> jax.Array:
  """Pairwise dot products, as the reference's ``interact_features('dot')``.

  Args:
    bottom: f32[B, D] bottom MLP output.
    emb: f32[B, T, D] embeddings.
    itself: keep the diagonal (each vector's dot product with itself).
    dtype: the dots' operand dtype (policy.py).
  Returns:
    f32[B, D + P] with P = F(F-1)/2 (F(F+1)/2 with ``itself``), F = T + 1.
  """
  features = jnp.concatenate([bottom[:, None, :], emb.astype(bottom.dtype)], axis=1)
  pairs = _gram_pairs(features, itself, jnp.dtype(dtype))
  return jnp.concatenate([bottom, pairs.astype(bottom.dtype)], axis=1)


def cat_interaction(bottom: jax.Array, emb: jax.Array) -> jax.Array:
  """Concatenation: f32[B, D] and f32[B, T, D] -> f32[B, D + T*D].

  No dot here: the top MLP's first layer casts the result to the operand
  dtype (policy.py).
  """
  return jnp.concatenate([bottom, emb.astype(bottom.dtype).reshape(emb.shape[0], -1)], axis=1)


def interaction_width(kind: str, num_tables: int, dim: int, itself: bool = False) -> int:
  """Width of the top MLP's input for ``kind``."""
  f = num_tables + 1
  if kind == "dot":
    return dim + (f * (f + 1) // 2 if itself else f * (f - 1) // 2)
  if kind == "cat":
    return dim * f
  raise ValueError(f"--interaction={kind!r}: must be one of {', '.join(INTERACTIONS)}")


def interact(
  kind: str, bottom: jax.Array, emb: jax.Array, itself: bool = False, dtype=jnp.float32
) -> jax.Array:
  """The dot or cat interaction of [bottom, emb]; ``dtype``: the dots' operand dtype."""
  if kind == "dot":
    return dot_interaction(bottom, emb, itself, dtype)
  if kind == "cat":
    return cat_interaction(bottom, emb)
  raise ValueError(f"--interaction={kind!r}: must be one of {', '.join(INTERACTIONS)}")
