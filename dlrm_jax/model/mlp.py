"""Dense layers under the model's policy: the MLP and the embedding MLP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrm_jax.model import policy


class Dense(nn.Module):
  """``x @ kernel + bias`` with the policy's dot (policy.dense); returns f32.

  Parameters ``kernel`` f32[K, N] and ``bias`` f32[N], created in that order,
  as flax's nn.Dense, so initial values and checkpoints do not depend on
  which of the two builds the layer.
  """

  features: int
  kernel_init: Callable = policy.reference_normal
  bias_init: Callable = policy.reference_bias
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return policy.dense(x, kernel, self.dtype) + bias


class MLP(nn.Module):
  """Dense layers with ReLU; the last layer's activation is optional.

  ``dtype`` is the matmuls' operand dtype (policy.py); parameters, the
  accumulation, the bias and the output stay f32.
  """

  widths: Sequence[int]
  relu_last: bool = True
  bias_init: Callable = policy.reference_bias
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = Dense(width, bias_init=self.bias_init, dtype=self.dtype, name=f"dense_{i}")(x)
      if i < len(self.widths) - 1 or self.relu_last:
        x = nn.relu(x)
    return x


class EmbeddingMLP(nn.Module):
  """The optional "NNs" layer over the embeddings: an MLP applied to every embedding vector.

  ReLU between layers, none after the last, so that the vectors reaching the
  interaction keep both signs as raw embeddings do (a final ReLU would zero
  about half of every vector at initialisation). Kernels start as the
  reference's MLPs, N(0, sqrt(2 / (fan_in + fan_out))); biases start at zero:
  embedding rows start in U(-1/sqrt(rows), 1/sqrt(rows)), far below the
  reference bias init N(0, 1/sqrt(width)), which would replace every vector by
  nearly the same bias vector. ``shared``: one MLP for all T features; else one
  per feature (parameters stacked on a leading axis of size T). ``dtype``: as MLP.
  """

  widths: Sequence[int]
  shared: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, emb: jax.Array) -> jax.Array:
    """emb: f32[B, T, D] -> f32[B, T, widths[-1]]."""
    zeros = nn.initializers.zeros
    if self.shared:
      return MLP(self.widths, False, zeros, self.dtype, name="shared")(emb)
    per_feature = nn.vmap(
      MLP,
      in_axes=1,
      out_axes=1,
      variable_axes={"params": 0},
      split_rngs={"params": True},
    )
    return per_feature(self.widths, False, zeros, self.dtype, name="per_feature")(emb)
