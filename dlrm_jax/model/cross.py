"""Cross networks of DCN (Wang et al. 2017) and DCN-V2 (Wang et al. 2021) as Flax modules."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrm_jax.model import policy

# Depth used when --dcn_num_layers=0: the DLRM paper's DCN comparison and MLPerf DLRM-DCNv2.
REFERENCE_NUM_LAYERS = {"dcn": 6, "dcnv2": 3}


def _vector_init(key, shape, dtype=jnp.float32) -> jax.Array:
  """xavier-normal of a [d, 1] matrix, as a vector f32[d]."""
  return policy.reference_normal(key, (shape[0], 1), dtype)[:, 0]


def stack_features(bottom: jax.Array, emb: jax.Array) -> jax.Array:
  """x0 = [bottom_out, emb_1..emb_T] flattened: f32[B, D], f32[B, T, D] -> f32[B, (T+1)*D]."""
  return jnp.concatenate([bottom[:, None, :], emb], axis=1).reshape(bottom.shape[0], -1)


class VectorCrossNet(nn.Module):
  """DCN's cross network: ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l``, w_l and b_l in R^d.

  ``x_l . w_l`` is one scalar per example. Initialised like TorchRec's
  ``VectorCrossNet`` (the DCN-V1 module of torchrec.modules.crossnet):
  ``w_l`` xavier-normal as a [d, 1] matrix, i.e. N(0, sqrt(2 / (d + 1))), and
  ``b_l`` zero. Parameters: ``kernel_l`` f32[d], ``bias_l`` f32[d] per layer.
  ``dtype``: the dots' operand dtype (policy.py); everything else stays f32.
  """

  num_layers: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x0: jax.Array) -> jax.Array:
    """x0: f32[B, d] -> f32[B, d]."""
    d = x0.shape[-1]
    x = x0
    for layer in range(self.num_layers):
      w = self.param(f"kernel_{layer}", _vector_init, (d,))
      b = self.param(f"bias_{layer}", nn.initializers.zeros, (d,))
      x = x0 * policy.dense(x, w[:, None], self.dtype) + b + x
    return x


class LowRankCrossNet(nn.Module):
  """DCN-V2's cross network: ``x_{l+1} = x0 * (U_l (V_l x_l) + b_l) + x_l``.

  With ``low_rank_dim`` r > 0, U_l is [d, r] and V_l is [r, d] (TorchRec's
  ``LowRankCrossNet``, MLPerf DLRM-DCNv2); with r = 0 a full-rank W_l [d, d]
  replaces U_l V_l (TorchRec's ``CrossNet``). Initialised like TorchRec:
  U_l, V_l (or W_l) xavier-normal, N(0, sqrt(2 / (d + r))) (N(0, sqrt(1 / d))
  for W_l), and b_l zero.

  Parameters are stored transposed for row-vector batches, ``y = x @ v @ u``:
  ``v_l`` f32[d, r] = V_l^T, ``u_l`` f32[r, d] = U_l^T (full rank: ``w_l``
  f32[d, d] = W_l^T), ``bias_l`` f32[d]. ``dtype``: the dots' operand dtype
  (policy.py); everything else stays f32.
  """

  num_layers: int
  low_rank_dim: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x0: jax.Array) -> jax.Array:
    """x0: f32[B, d] -> f32[B, d]."""
    d, r = x0.shape[-1], self.low_rank_dim
    x = x0
    for layer in range(self.num_layers):
      if r:
        v = self.param(f"v_{layer}", policy.reference_normal, (d, r))
        u = self.param(f"u_{layer}", policy.reference_normal, (r, d))
        y = policy.dense(policy.dense(x, v, self.dtype), u, self.dtype)
      else:
        w = self.param(f"w_{layer}", policy.reference_normal, (d, d))
        y = policy.dense(x, w, self.dtype)
      b = self.param(f"bias_{layer}", nn.initializers.zeros, (d,))
      x = x0 * (y + b) + x
    return x
