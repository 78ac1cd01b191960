"""The dense part of DLRM in Flax: bottom MLP, interaction, top MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dlrm_jax.interaction import interact


def _reference_kernel_init(key, shape, dtype=jnp.float32):
  """N(0, sqrt(2 / (fan_in + fan_out))), as the reference's create_mlp."""
  fan_in, fan_out = shape
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / (fan_in + fan_out)).astype(dtype)


def _reference_bias_init(key, shape, dtype=jnp.float32):
  """N(0, sqrt(1 / fan_out))."""
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / shape[0]).astype(dtype)


def matmul_precision(dtype) -> lax.Precision:
  """HIGHEST for f32 (no TF32 on GPUs, as the reference); bf16 inputs need no more than DEFAULT."""
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


class MLP(nn.Module):
  """Dense layers with ReLU; the last layer's activation is optional.

  ``dtype`` is the matmuls' dtype; parameters stay f32 (``param_dtype``).
  """

  widths: Sequence[int]
  relu_last: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = nn.Dense(
        width,
        kernel_init=_reference_kernel_init,
        bias_init=_reference_bias_init,
        dtype=self.dtype,
        precision=matmul_precision(self.dtype),
        name=f"dense_{i}",
      )(x)
      if i < len(self.widths) - 1 or self.relu_last:
        x = nn.relu(x)
    return x


class DenseModel(nn.Module):
  """Everything but the embedding tables, which live beside it (see embedding.py).

  Attributes:
    bottom_mlp: widths after the 13 dense inputs; the last must equal the
      embedding dim for the dot interaction.
    top_mlp: widths after the interaction; the last must be 1 (the logit).
    interaction: 'dot' or 'cat'.
    interaction_itself: keep the diagonal of the dot interaction.
    dtype: the MLP and interaction matmuls' dtype (--compute_dtype); params,
      embeddings and the returned logits stay f32.
  """

  bottom_mlp: Sequence[int]
  top_mlp: Sequence[int]
  interaction: str = "dot"
  interaction_itself: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, dense: jax.Array, emb: jax.Array) -> jax.Array:
    """dense: f32[B, 13], emb: f32[B, T, D] -> logits f32[B]."""
    bottom = MLP(self.bottom_mlp, relu_last=True, dtype=self.dtype, name="bottom_mlp")(dense)
    with jax.named_scope("interaction"):
      z = interact(self.interaction, bottom, emb.astype(self.dtype), self.interaction_itself)
    logits = MLP(self.top_mlp, relu_last=False, dtype=self.dtype, name="top_mlp")(z)[:, 0]
    return logits.astype(jnp.float32)
