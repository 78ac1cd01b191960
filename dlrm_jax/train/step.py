"""The jitted, explicitly sharded train and eval steps; pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding import collectives
from dlrm_jax.sharding import managed as managed_lib
from dlrm_jax.sharding.exchange import lookup, route_gradients
from dlrm_jax.sharding.mesh import BATCH_AXES, MODEL_AXIS, batch_spec
from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.train.state import TrainState, state_shardings, state_specs

BATCH_KEYS = ("dense", "sparse", "label", "mask")


def batch_shardings(mesh: Mesh, stacked: bool = False) -> dict[str, NamedSharding]:
  """Shardings of a batch, or (``stacked``) of [K, B, ...] batches for one multi-step call."""
  return {k: NamedSharding(mesh, _batch_spec(stacked)) for k in BATCH_KEYS}


def to_global(
  batch: dict[str, np.ndarray], mesh: Mesh, stacked: bool = False
) -> dict[str, jax.Array]:
  """Host-local NumPy slices -> global batch-sharded jax.Arrays (``stacked``: [K, b, ...])."""
  shardings = batch_shardings(mesh, stacked)
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def _batch_spec(stacked: bool) -> P:
  return P(None, *batch_spec()) if stacked else batch_spec()


def make_train_step(
  model: DenseModel,
  layout: EmbeddingLayout,
  sparse_opt: SparseOptimizer,
  dense_tx: optax.GradientTransformation,
  mesh: Mesh,
  abstract_state: TrainState,
  steps_per_call: int = 1,
  managed: managed_lib.ManagedLayout | None = None,
) -> Callable:
  """Returns jitted ``step(state, batch) -> (state, metrics)``; state is donated.

  Per device: look up embeddings (explicit exchange), differentiate the local
  share of the global-mean loss w.r.t. the dense params and the looked-up rows,
  update the MLPs with optax and the touched table rows in place.

  metrics (f32[] each): ``loss`` (mean over unmasked examples), ``lr`` (the
  rate of this update, from state.step), ``correct`` and ``count`` (unmasked
  examples predicted right at probability 0.5, and unmasked examples: sums, so
  that the host can average over many steps exactly).

  ``steps_per_call`` K > 1: ``step(state, batches)`` takes K stacked batches
  (leaves [K, B, ...], ``batch_shardings(mesh, stacked=True)``) and runs the
  same step K times in a ``lax.scan`` within one dispatch; each metric is then
  f32[K], one per step.

  ``managed`` (--id_mapping=managed): ``batch["sparse"]`` holds raw ids, which the
  maps in ``state.managed`` turn into rows first (inserting, evicting and
  resetting rows; sharding/managed.py).
  """

  def per_device(state: TrainState, batch: dict[str, jax.Array]):
    sparse = batch["sparse"]
    if managed is not None:
      with jax.named_scope("managed_ids"):
        maps, tables, slots, sparse = managed_lib.update_rows(
          managed,
          state.managed,
          state.tables,
          state.slots,
          sparse,
          batch["mask"] > 0,
          state.step,
          sparse_opt.initial_accumulator,
        )
      state = state.replace(managed=maps, tables=tables, slots=slots)
    with jax.named_scope("embedding_lookup"):
      emb = lookup(layout, state.tables, sparse)
    count = collectives.psum(jnp.sum(batch["mask"]), BATCH_AXES)

    def local_loss(params, emb):
      logits = model.apply({"params": params}, batch["dense"], emb)
      losses = optax.sigmoid_binary_cross_entropy(logits, batch["label"]) * batch["mask"]
      # Divided by the global count, so that summing over devices gives the
      # global mean: row gradients need no further scaling.
      return jnp.sum(losses) / count, logits

    with jax.named_scope("dense_forward_backward"):
      (loss, logits), (param_grads, emb_grads) = jax.value_and_grad(
        local_loss, argnums=(0, 1), has_aux=True
      )(state.params, emb)
    right = (logits > 0) == (batch["label"] > 0.5)
    correct = collectives.psum(jnp.sum(jnp.where(right, batch["mask"], 0.0)), BATCH_AXES)
    lr = sparse_opt.lr_at(state.step)
    with jax.named_scope("dense_grad_all_reduce"):
      param_grads = collectives.psum(param_grads, BATCH_AXES)
    with jax.named_scope("dense_update"):
      updates, opt_state = dense_tx.update(param_grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    with jax.named_scope("embedding_update"):
      routed = route_gradients(layout, sparse, emb_grads)
      tables, slots = dict(state.tables), dict(state.slots)
      for name, r in routed.items():
        tables[name], slots[name] = sparse_opt.apply(
          state.tables[name],
          state.slots[name],
          r.rows,
          r.grads,
          r.valid,
          column_axis=MODEL_AXIS if name == "column" else None,
          full_dim=layout.dim,
          learning_rate=lr,
        )
    new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, tables=tables, slots=slots
    )
    metrics = {
      "loss": collectives.psum(loss, BATCH_AXES),
      "lr": jnp.asarray(lr, jnp.float32),
      "correct": correct,
      "count": count.astype(jnp.float32),
    }
    return new_state, metrics

  body = per_device
  if steps_per_call > 1:

    def body(state: TrainState, batches: dict[str, jax.Array]):
      return lax.scan(per_device, state, batches, length=steps_per_call)

  stacked = steps_per_call > 1
  specs = state_specs(abstract_state)
  batch_specs = {k: _batch_spec(stacked) for k in BATCH_KEYS}
  # check_vma=False: the exchange is written with explicit collectives and the
  # dense all-reduce is the explicit psum above (with vma checking on, JAX would
  # insert that psum implicitly, and would reject the data-replicated table
  # updates it cannot prove replicated). Equality with one device is tested.
  sharded = jax.shard_map(
    body, mesh=mesh, in_specs=(specs, batch_specs), out_specs=(specs, P()), check_vma=False
  )
  shardings = state_shardings(mesh, abstract_state)
  return jax.jit(
    sharded,
    in_shardings=(shardings, batch_shardings(mesh, stacked)),
    out_shardings=(shardings, NamedSharding(mesh, P())),
    donate_argnums=(0,),
  )


def make_eval_step(
  model: DenseModel,
  layout: EmbeddingLayout,
  mesh: Mesh,
  abstract_state: TrainState,
  managed: managed_lib.ManagedLayout | None = None,
) -> Callable:
  """Returns jitted ``eval_step(state, batch) -> logits f32[B]`` (batch-sharded).

  ``managed``: raw ids are looked up in the maps, which it does not change; an id
  they do not hold takes the unknown row (row 0).
  """

  def per_device(state: TrainState, batch: dict[str, jax.Array]):
    sparse = batch["sparse"]
    if managed is not None:
      sparse = managed_lib.lookup_rows(managed, state.managed, sparse)
    emb = lookup(layout, state.tables, sparse)
    return model.apply({"params": state.params}, batch["dense"], emb)

  specs = state_specs(abstract_state)
  batch_specs = {k: batch_spec() for k in BATCH_KEYS}
  sharded = jax.shard_map(
    per_device, mesh=mesh, in_specs=(specs, batch_specs), out_specs=batch_spec(), check_vma=False
  )
  return jax.jit(
    sharded,
    in_shardings=(state_shardings(mesh, abstract_state), batch_shardings(mesh)),
    out_shardings=NamedSharding(mesh, batch_spec()),
  )
