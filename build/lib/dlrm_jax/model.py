"""The dense part of DLRM in Flax: bottom MLP, interaction, top MLP."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrm_jax.interaction import interact


def _reference_kernel_init(key, shape, dtype=jnp.float32):
  """N(0, sqrt(2 / (fan_in + fan_out))), as the reference's create_mlp."""
  fan_in, fan_out = shape
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / (fan_in + fan_out)).astype(dtype)


def _reference_bias_init(key, shape, dtype=jnp.float32):
  """N(0, sqrt(1 / fan_out))."""
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / shape[0]).astype(dtype)


class MLP(nn.Module):
  """Dense layers with ReLU; the last layer's activation is optional."""

  widths: Sequence[int]
  relu_last: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = nn.Dense(
        width, kernel_init=_reference_kernel_init, bias_init=_reference_bias_init, name=f"dense_{i}"
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
  """

  bottom_mlp: Sequence[int]
  top_mlp: Sequence[int]
  interaction: str = "dot"
  interaction_itself: bool = False

  @nn.compact
  def __call__(self, dense: jax.Array, emb: jax.Array) -> jax.Array:
    """dense: f32[B, 13], emb: f32[B, T, D] -> logits f32[B]."""
    bottom = MLP(self.bottom_mlp, relu_last=True, name="bottom_mlp")(dense)
    with jax.named_scope("interaction"):
      z = interact(self.interaction, bottom, emb, self.interaction_itself)
    return MLP(self.top_mlp, relu_last=False, name="top_mlp")(z)[:, 0]
