"""The dense part of DLRM in Flax: bottom MLP, optional embedding MLP, interaction, top MLP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dlrm_jax.model.cross import LowRankCrossNet, VectorCrossNet, stack_features
from dlrm_jax.model.interaction import interact


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
  bias_init: Callable = _reference_bias_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = nn.Dense(
        width,
        kernel_init=_reference_kernel_init,
        bias_init=self.bias_init,
        dtype=self.dtype,
        precision=matmul_precision(self.dtype),
        name=f"dense_{i}",
      )(x)
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
  per feature (parameters stacked on a leading axis of size T).
  """

  widths: Sequence[int]
  shared: bool = True

  @nn.compact
  def __call__(self, emb: jax.Array) -> jax.Array:
    """emb: f32[B, T, D] -> f32[B, T, widths[-1]]."""
    zeros = nn.initializers.zeros
    if self.shared:
      return MLP(self.widths, relu_last=False, bias_init=zeros, name="shared")(emb)
    per_feature = nn.vmap(
      MLP,
      in_axes=1,
      out_axes=1,
      variable_axes={"params": 0},
      split_rngs={"params": True},
    )
    return per_feature(self.widths, relu_last=False, bias_init=zeros, name="per_feature")(emb)


class DenseModel(nn.Module):
  """Everything but the embedding tables, which live beside it (see embedding.py).

  Attributes:
    bottom_mlp: widths after the 13 dense inputs (ReLU after each); the last
      must equal the embedding dim for dot, dcn and dcnv2.
    top_mlp: widths after the interaction (ReLU between, none after the last);
      the last must be 1 (the logit). dot / cat / dcnv2: the top MLP on the
      interaction's output. dcn: the layers on [cross_out, deep_out]; the
      paper's DCN, whose combination goes straight to the logit, is (1,).
    interaction: 'dot', 'cat', 'dcn' (DCN, Wang et al. 2017: cross network and
      a deep network side by side on x0 = [bottom_out, emb_1..emb_T]) or
      'dcnv2' (DCN-V2: a cross network on x0, stacked under the top MLP).
    interaction_itself: keep the diagonal of the dot interaction.
    dcn_num_layers: cross layers of dcn / dcnv2 (resolved: >= 1 there).
    dcn_deep_mlp: dcn's deep network widths on x0, ReLU after each.
    dcn_low_rank_dim: dcnv2's rank r of U V; 0 = full-rank W.
    embedding_mlp: widths of the MLP over each embedding vector; () = none.
    embedding_mlp_shared: one embedding MLP for all features, else one each.
    dtype: the MLP and interaction matmuls' dtype (--compute_dtype); params,
      embeddings and the returned logits stay f32.
  """

  bottom_mlp: Sequence[int]
  top_mlp: Sequence[int]
  interaction: str = "dot"
  interaction_itself: bool = False
  dcn_num_layers: int = 0
  dcn_deep_mlp: Sequence[int] = ()
  dcn_low_rank_dim: int = 0
  embedding_mlp: Sequence[int] = ()
  embedding_mlp_shared: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, dense: jax.Array, emb: jax.Array) -> jax.Array:
    """dense: f32[B, 13], emb: f32[B, T, D] -> logits f32[B]."""
    bottom = MLP(self.bottom_mlp, relu_last=True, dtype=self.dtype, name="bottom_mlp")(dense)
    if self.embedding_mlp:
      emb = EmbeddingMLP(self.embedding_mlp, self.embedding_mlp_shared, name="embedding_mlp")(emb)
    emb = emb.astype(self.dtype)
    with jax.named_scope("interaction"):
      if self.interaction == "dcn":
        x0 = stack_features(bottom, emb)
        cross = VectorCrossNet(self.dcn_num_layers, name="cross")(x0)
        deep = MLP(self.dcn_deep_mlp, relu_last=True, dtype=self.dtype, name="deep_mlp")(x0)
        z = jnp.concatenate([cross, deep], axis=1)
      elif self.interaction == "dcnv2":
        x0 = stack_features(bottom, emb)
        z = LowRankCrossNet(self.dcn_num_layers, self.dcn_low_rank_dim, name="cross")(x0)
      else:
        z = interact(self.interaction, bottom, emb, self.interaction_itself)
    logits = MLP(self.top_mlp, relu_last=False, dtype=self.dtype, name="top_mlp")(z)[:, 0]
    return logits.astype(jnp.float32)
