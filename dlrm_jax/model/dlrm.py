"""The dense part of DLRM in Flax: bottom MLP, optional embedding MLP, interaction, top MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrm_jax.model.cross import LowRankCrossNet, VectorCrossNet, stack_features
from dlrm_jax.model.interaction import interact
from dlrm_jax.model.mlp import MLP, EmbeddingMLP


class DenseModel(nn.Module):
  """Everything but the embedding tables, which live beside it (see sharding/exchange.py).

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
    dtype: the operand dtype of every dot (--compute_dtype): MLPs, embedding
      MLP, interactions, cross nets (model/policy.py); parameters, embeddings,
      accumulations and the returned logits stay f32.
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
      emb = EmbeddingMLP(
        self.embedding_mlp, self.embedding_mlp_shared, self.dtype, name="embedding_mlp"
      )(emb)
    with jax.named_scope("interaction"):
      if self.interaction == "dcn":
        x0 = stack_features(bottom, emb)
        cross = VectorCrossNet(self.dcn_num_layers, self.dtype, name="cross")(x0)
        deep = MLP(self.dcn_deep_mlp, relu_last=True, dtype=self.dtype, name="deep_mlp")(x0)
        z = jnp.concatenate([cross, deep], axis=1)
      elif self.interaction == "dcnv2":
        x0 = stack_features(bottom, emb)
        z = LowRankCrossNet(self.dcn_num_layers, self.dcn_low_rank_dim, self.dtype, name="cross")(
          x0
        )
      else:
        z = interact(self.interaction, bottom, emb, self.interaction_itself, self.dtype)
    logits = MLP(self.top_mlp, relu_last=False, dtype=self.dtype, name="top_mlp")(z)[:, 0]
    return logits.astype(jnp.float32)
