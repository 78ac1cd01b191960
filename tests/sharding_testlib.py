"""Shared pieces of the sharding tests: tiny tables, duplicate-heavy ids, a dense reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlrm_jax.checkpoint.table_io import logical_table
from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.sharding.planner import EmbeddingLayout, plan_layout
from dlrm_jax.sharding.specs import table_specs
from dlrm_jax.train.state import create_train_state, dense_optimizer
from dlrm_jax.train.step import batch_shardings, make_eval_step, make_train_step

DIM = 8  # divisible by 8 and 4: column-wise works on both meshes
ROWS = (1000, 257, 96, 64, 33, 24, 17, 16)
NAMES = tuple(f"C{i + 1}" for i in range(len(ROWS)))
BATCH = 64
LR = 0.1
# Mixed: the planner decides the rest (column-wise for the big tables, as the
# model axis divides DIM, table-wise for the small ones); overrides bring in
# the other plans.
MIXED_OVERRIDES = {"C2": "row", "C4": "row", "C6": "replicated"}


def specs(rows=ROWS, bag_sizes=None, pooling="sum"):
  return table_specs(list(NAMES[: len(rows)]), list(rows), DIM, bag_sizes, pooling)


def layout_for(
  plan: str, model_size: int, slot_floats: int = 0, bag_sizes=None, pooling="sum", overrides=None
) -> EmbeddingLayout:
  """``overrides`` add to MIXED_OVERRIDES for plan 'mixed'."""
  tables = specs(ROWS, bag_sizes, pooling)
  if plan == "mixed":
    return plan_layout(
      tables,
      model_size,
      overrides={**MIXED_OVERRIDES, **(overrides or {})},
      slot_floats_per_row=slot_floats,
    )
  return plan_layout(tables, model_size, default=plan, slot_floats_per_row=slot_floats)


def model() -> DenseModel:
  return DenseModel(bottom_mlp=(16, DIM), top_mlp=(16, 1))


def make_batch(step: int, rows=ROWS, batch: int = BATCH) -> dict[str, np.ndarray]:
  """Random ids plus, per table, one id in every 1/8 and 1/4 of its rows and many duplicates."""
  rng = np.random.default_rng(1000 + step)
  ids = np.stack([rng.integers(0, r, batch) for r in rows], axis=1).astype(np.int32)
  for t, r in enumerate(rows):
    chunk = -(-r // 8)
    ids[:8, t] = np.minimum(np.arange(8) * chunk + step % chunk, r - 1)
    ids[8:20, t] = ids[step % 8, t]  # one row looked up 13 times, across devices
    ids[20:24, t] = r - 1
  rng.shuffle(ids, axis=0)
  return batch_around(ids, rng)


def batch_around(sparse: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A full batch for ``sparse`` ids: normal dense features, 40 % positive labels, no padding."""
  batch = sparse.shape[0]
  return {
    "dense": rng.normal(size=(batch, 13)).astype(np.float32),
    "sparse": sparse,
    "label": (rng.random(batch) < 0.4).astype(np.float32),
    "mask": np.ones(batch, np.float32),
  }


class Sharded:
  """State and compiled steps of one (mesh, plan, optimizer) combination."""

  def __init__(
    self,
    mesh_shape,
    plan: str,
    optimizer: str,
    seed: int = 0,
    bag_sizes=None,
    pooling="sum",
    overrides=None,
    dense_model: DenseModel = None,
  ):
    self.mesh = mesh_lib.make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    self.opt = SparseOptimizer(optimizer, LR)
    self.layout = layout_for(
      plan,
      mesh_lib.model_size(self.mesh),
      self.opt.slot_floats_per_row(DIM),
      bag_sizes,
      pooling,
      overrides,
    )
    self.tx = dense_optimizer(optimizer, LR)
    self.model = dense_model or model()
    self.state = create_train_state(
      self.model, self.layout, self.opt, self.tx, self.mesh, jax.random.key(seed)
    )
    abstract = jax.eval_shape(lambda s: s, self.state)
    self.train_step = make_train_step(
      self.model, self.layout, self.opt, self.tx, self.mesh, abstract
    )
    self.eval_step = make_eval_step(self.model, self.layout, self.mesh, abstract)

  def put(self, batch):
    return jax.device_put(batch, batch_shardings(self.mesh))

  def forward_then_train(self, batches) -> tuple[np.ndarray, np.ndarray]:
    """(logits of batches[0] before training, the loss of each train step over ``batches``)."""
    forward = np.asarray(self.eval_step(self.state, self.put(batches[0])))
    losses = []
    for batch in batches:
      self.state, metrics = self.train_step(self.state, self.put(batch))
      losses.append(float(metrics["loss"]))
    return forward, np.asarray(losses)

  def tables(self) -> list[np.ndarray]:
    return [
      logical_table(self.layout, self.state.tables, t) for t in range(len(self.layout.placements))
    ]


def _lookup(tables, ids):
  return jnp.stack([tables[t][ids[:, t]] for t in range(len(tables))], axis=1)


def reference_logits(dense_model, params, tables, batch, embed=_lookup):
  """``embed(tables, sparse) -> f32[B, T, D]``: one id per feature unless given."""
  return dense_model.apply({"params": params}, batch["dense"], embed(tables, batch["sparse"]))


def reference_train(dense_model, params, tables, batches, optimizer: str, embed=_lookup):
  """Plain single-device training with whole-table gradients; dense_optimizer for everything.

  (dense_optimizer itself is checked against a NumPy loop in test_dense_optim.py.)
  Row-wise Adagrad has no dense form for tables, so its table update is
  written out here from the formula, independently of sparse_optim.
  """
  tables = [jnp.asarray(t) for t in tables]

  def loss_fn(params, tables, batch):
    logits = reference_logits(dense_model, params, tables, batch, embed)
    losses = optax.sigmoid_binary_cross_entropy(logits, batch["label"]) * batch["mask"]
    return jnp.sum(losses) / jnp.sum(batch["mask"])

  tx = dense_optimizer(optimizer, LR)
  table_tx = tx if optimizer != "rowwise_adagrad" else None
  opt_state = tx.init(params)
  table_state = (
    table_tx.init(tables) if table_tx is not None else [jnp.zeros(t.shape[0]) for t in tables]
  )
  losses = []

  @jax.jit
  def step(params, tables, opt_state, table_state, batch):
    loss, (gp, gt) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, tables, batch)
    up, opt_state = tx.update(gp, opt_state, params)
    params = optax.apply_updates(params, up)
    if table_tx is not None:
      ut, table_state = table_tx.update(gt, table_state, tables)
      tables = optax.apply_updates(tables, ut)
    else:
      acc = [a + jnp.mean(g * g, axis=1) for a, g in zip(table_state, gt, strict=True)]
      tables = [
        t - LR * g / (jnp.sqrt(a) + 1e-10)[:, None] for t, g, a in zip(tables, gt, acc, strict=True)
      ]
      table_state = acc
    return params, tables, opt_state, table_state, loss

  for batch in batches:
    params, tables, opt_state, table_state, loss = step(
      params, tables, opt_state, table_state, batch
    )
    losses.append(float(loss))
  return params, [np.asarray(t) for t in tables], losses
