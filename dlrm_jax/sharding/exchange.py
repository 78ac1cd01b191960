"""The sharded embedding exchange: lookup and gradient routing composed over the plans.

Every function here but ``exchange_bytes`` runs inside ``jax.shard_map`` over
the (data, model) mesh; each plan's collectives are in ``plans``. This module
shares what the plans have in common: the ids gathered once over ``model``, the
features put back in order, mean pooling's scale, and the buffers the routed
gradients belong to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlrm_jax.sharding import bags, collectives
from dlrm_jax.sharding.mesh import MODEL_AXIS
from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.sharding.plans import PLANS, RoutedGradients

__all__ = ["RoutedGradients", "exchange_bytes", "lookup", "route_gradients"]


def _model_group_ids(layout: EmbeddingLayout, ids: jax.Array) -> jax.Array | None:
  """Ids of the whole model group, which every plan but replicated serves; gathered once."""
  needs_model_group = any(p.plan != "replicated" for p in layout.placements)
  return collectives.all_gather(ids, MODEL_AXIS) if needs_model_group else None


def lookup(layout: EmbeddingLayout, buffers: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
  """Per-device embedding lookup; bags are pooled where their rows live.

  Args:
    layout: static table placement.
    buffers: this device's shards of the fused buffers.
    ids: i32[b, S] this device's examples (S = sum of bag sizes; see bags.py).
  Returns:
    f32[b, T, dim] pooled embeddings, in feature order.
  """
  b = ids.shape[0]
  pieces, order = [], []
  ids_m = _model_group_ids(layout, ids)
  for name, plan in PLANS.items():
    features = layout.features(name)
    if features:
      with jax.named_scope(f"{plan.scope}_lookup"):
        pieces.append(plan.lookup(layout, features, buffers[plan.buffer], ids, ids_m))
        order += features

  emb = jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
  inverse = np.argsort(np.asarray(order))
  if not np.array_equal(inverse, np.arange(len(order))):
    emb = emb[:, inverse]
  assert emb.shape[:2] == (b, len(layout.placements))
  scale = bags.mean_scale(layout, ids)
  return emb if scale is None else emb * scale[..., None]


def _concat(parts: list[RoutedGradients]) -> RoutedGradients:
  if len(parts) == 1:
    return parts[0]
  return RoutedGradients(*(jnp.concatenate(xs, axis=0) for xs in zip(*parts, strict=True)))


def route_gradients(
  layout: EmbeddingLayout, ids: jax.Array, grads: jax.Array
) -> dict[str, RoutedGradients]:
  """Per-device reverse exchange: pooled gradients travel to the rows' owners.

  Each bag's gradient travels once; owners copy it to every id of the bag.

  Args:
    ids: i32[b, S] this device's examples (as given to ``lookup``).
    grads: f32[b, T, dim] d(global loss)/d(pooled embeddings) for those examples.
  Returns:
    buffer name -> gradients for rows of this device's shard of that buffer,
    one per id of the whole global batch (empty slots marked invalid).
  """
  routed: dict[str, list[RoutedGradients]] = {}
  ids_m = _model_group_ids(layout, ids)
  scale = bags.mean_scale(layout, ids)
  if scale is not None:
    grads = grads * scale[..., None]
  for name, plan in PLANS.items():
    features = layout.features(name)
    if features:
      with jax.named_scope(f"{plan.scope}_backward"):
        routed.setdefault(plan.buffer, []).append(plan.route(layout, features, ids, ids_m, grads))
  return {name: _concat(parts) for name, parts in routed.items()}


def exchange_bytes(
  layout: EmbeddingLayout, data_size: int, batch_size: int, id_bytes: int = 4, value_bytes: int = 4
) -> dict[str, int]:
  """Bytes that all devices together send per training step, by phase.

  Mirrors the collectives of ``lookup`` and ``route_gradients`` on a
  (``data_size``, ``layout.model_size``) mesh with a global batch of
  ``batch_size`` examples: an all_gather / all_to_all / psum_scatter over an
  axis of size n sends (n - 1) / n of its per-device input from each device
  (ring algorithms). Ids travel one per bag slot; embeddings and their
  gradients one per bag (pooled). Each plan's share is its ``traffic``.
  ``minimum`` is the bytes of the pooled embeddings the batch needs,
  B * T * dim, each sent once.
  """
  m, d = layout.model_size, data_size
  devices = m * d
  b = batch_size // devices
  per_row = layout.dim * value_bytes
  shares = [
    plan.traffic(layout, layout.features(name), id_bytes, value_bytes)
    for name, plan in PLANS.items()
    if layout.features(name)
  ]
  out = {"ids": 0, "forward": 0, "backward": 0, "backward_data": 0}
  if any(p.plan != "replicated" for p in layout.placements):
    # ids all_gather over model (XLA merges the forward and backward ones).
    out["ids"] = devices * (m - 1) * b * sum(bags.bag_sizes(layout)) * id_bytes
  out["forward"] = devices * (m - 1) * b * per_row * sum(t.forward_rows for t in shares)
  out["backward"] = (
    devices
    * (m - 1)
    * b
    * (
      per_row * sum(t.backward_rows for t in shares)
      + id_bytes * sum(t.backward_ids for t in shares)
    )
  )
  # Backward over data: every data replica applies the global update, so the
  # routed (rows, pooled grads) are all-gathered over data.
  out["backward_data"] = devices * (d - 1) * b * m * sum(t.data_bytes for t in shares)
  out["total"] = sum(out.values())
  out["minimum"] = batch_size * len(layout.placements) * per_row
  return out
