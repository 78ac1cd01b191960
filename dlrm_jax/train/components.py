"""Building a run: mesh, dataset, plan, model and optimizers, and the state to start from.

Training (train.py), evaluation and prediction (inference.py) and export
(export.py) are siblings on top of this module.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data.datasets import check_data_matches_model, model_table_sizes, resolve_dataset
from dlrm_jax.data.loader import check_batch_ids
from dlrm_jax.data.raw_ids import hash_ids
from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.optim import schedules
from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.sharding.managed import MANAGED_FLOATS_PER_ROW, ManagedLayout, managed_layout
from dlrm_jax.sharding.planner import EmbeddingLayout, plan_layout
from dlrm_jax.sharding.specs import table_specs
from dlrm_jax.train.state import (
  TrainState,
  create_train_state,
  dense_init,
  dense_optimizer,
  init_dense_state,
)


@dataclasses.dataclass(frozen=True)
class Components:
  """Everything static that a run builds from its config and data."""

  config: Config
  mesh: Mesh
  layout: EmbeddingLayout
  model: DenseModel
  sparse_opt: SparseOptimizer
  dense_tx: Any
  table_sizes: tuple[int, ...]
  managed: ManagedLayout | None = None  # --id_mapping=managed: the maps' static layout

  def check_ids(self, sparse: np.ndarray) -> np.ndarray:
    """The ids to feed for a host batch's sparse column: raw values % rows under
    --id_mapping=hash, the raw values' bits (int32) under managed, else as they are. Raises
    naming the feature if an id is outside its table (JAX would clamp)."""
    if self.managed is not None:
      return np.ascontiguousarray(sparse).view(np.int32)  # the devices map every value
    if self.config.id_mapping == "hash":
      sparse = hash_ids(sparse, self.table_sizes)
    check_batch_ids(sparse, self.table_sizes, self.config.bag_sizes(len(self.table_sizes)))
    return sparse


def build_components(config: Config, mesh: Mesh, table_sizes, table_names) -> Components:
  config.validate(mesh.devices.size)
  specs = table_specs(
    list(table_names),
    list(table_sizes),
    config.embedding_dim,
    config.bag_sizes(len(table_names)),
    config.pooling,
  )
  lr = _learning_rate(config)
  sparse_opt = SparseOptimizer(
    config.optimizer,
    lr,
    eps=config.adagrad_eps,
    initial_accumulator=config.adagrad_initial_accumulator,
  )
  model_shards = mesh_lib.model_size(mesh)
  memory = int(config.device_memory_gb * 2**30) if config.device_memory_gb else None
  managed = config.id_mapping == "managed"
  try:
    layout = plan_layout(
      specs,
      model_shards,
      default="row" if managed else config.sharding,
      overrides=dict(config.table_sharding),
      device_memory_bytes=memory,
      slot_floats_per_row=row_floats(config, sparse_opt),
    )
  except ConfigError:
    raise
  except ValueError as e:
    if not (managed and memory):
      raise
    # The capacity sets the managed tables' rows: name the flag that makes them fit. A
    # ValueError still, as the planner's own: --dry_run then compiles without the limit.
    raise ValueError(
      f"--managed_capacity={_capacity_text(config)}: the managed tables (capacity + 1 rows "
      f"each, with their maps; the largest {max(table_sizes):,} rows) do not fit: {e}; or lower "
      f"--managed_capacity"
    ) from None
  managed_tables = None
  if managed:
    try:
      managed_tables = managed_layout(layout, config.eviction, config.lfu_decay)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  return Components(
    config,
    mesh,
    layout,
    dense_model(config),
    sparse_opt,
    dense_transform(config),
    tuple(table_sizes),
    managed_tables,
  )


def _learning_rate(config: Config):
  return schedules.learning_rate(
    config.learning_rate,
    config.lr_warmup_steps,
    config.lr_decay_start_step,
    config.lr_decay_steps,
    config.lr_decay_power,
  )


def dense_transform(config: Config):
  """The optax transformation of the dense parameters (the tables' optimizer is sparse)."""
  return dense_optimizer(
    config.optimizer,
    _learning_rate(config),
    eps=config.adagrad_eps,
    initial_accumulator=config.adagrad_initial_accumulator,
  )


def row_floats(config: Config, sparse_opt: SparseOptimizer) -> int:
  """Floats the planner charges each row beside its embedding: optimizer slots, and under
  --id_mapping=managed the maps' state (sharding/managed.py)."""
  slots = sparse_opt.slot_floats_per_row(config.embedding_dim)
  return slots + (MANAGED_FLOATS_PER_ROW if config.id_mapping == "managed" else 0)


def _capacity_text(config: Config) -> str:
  pairs = [f"{name}:{n}" if name else str(n) for name, n in config.managed_capacity]
  return ",".join(pairs) or "(default)"


def dense_model(config: Config) -> DenseModel:
  """The Flax model of ``config`` (train, evaluation, prediction and export all build it here)."""
  return DenseModel(
    bottom_mlp=config.bottom_mlp,
    top_mlp=config.top_mlp,
    interaction=config.interaction,
    interaction_itself=config.interaction_itself,
    dcn_num_layers=config.resolved_dcn_num_layers,
    dcn_deep_mlp=config.dcn_deep_mlp if config.interaction == "dcn" else (),
    dcn_low_rank_dim=config.dcn_low_rank_dim if config.interaction == "dcnv2" else 0,
    embedding_mlp=config.embedding_mlp,
    embedding_mlp_shared=config.embedding_mlp_shared,
    dtype=jnp.dtype(config.compute_dtype),
  )


def parameter_counts(c: Components, num_dense: int = 13) -> dict[str, int]:
  """{"dense", "embedding", "total"}: trainable values, from abstract shapes (nothing allocated).

  dense: every Flax parameter (MLPs, cross layers); embedding: the tables'
  logical rows x --embedding_dim (no padding, no optimizer slots).
  """
  dim = c.config.embedding_dim
  params = jax.eval_shape(
    c.model.init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, num_dense), jnp.float32),
    jax.ShapeDtypeStruct((1, len(c.table_sizes), dim), jnp.float32),
  )
  dense = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  embedding = sum(int(rows) for rows in c.table_sizes) * dim
  return {"dense": dense, "embedding": embedding, "total": dense + embedding}


def abstract_train_state(c: Components) -> TrainState:
  """Shapes and dtypes of the TrainState ``c`` would create; allocates nothing."""
  return jax.eval_shape(
    lambda key: create_train_state(
      c.model, c.layout, c.sparse_opt, c.dense_tx, c.mesh, key, managed=c.managed
    ),
    jax.random.key(c.config.seed),
  )


def load_components(config: Config, *, progress: bool) -> tuple[Components, str, dict[str, Any]]:
  """Mesh, dataset and the static parts of the model: (components, processed dir, metadata)."""
  mesh = mesh_lib.make_mesh(config.mesh_shape)
  config.validate(mesh.devices.size)
  # Process 0 prepares (generates, preprocesses) first; the others then reuse
  # its cached output on a shared filesystem instead of racing to write it.
  if jax.process_index() == 0:
    processed, meta = resolve_dataset(config, progress=progress)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dataset prepared")
  if jax.process_index() != 0:
    processed, meta = resolve_dataset(config, progress=False)
  try:
    c = build_components(config, mesh, model_table_sizes(config, meta), meta["sparse_names"])
  except ValueError as e:  # the planner's refusal of --device_memory_gb: a message, no traceback
    raise ConfigError(str(e)) from None
  check_data_matches_model(config, processed, meta)  # before any id reaches a table
  return c, processed, meta


def dense_state_ahead(config: Config) -> Future | None:
  """Starts initialising the dense parameters and their optimizer state in a background thread.

  They need no table size, so a run computes them while its data is prepared: their
  compilation (XLA's threefry and erf_inv for each layer) is most of a cold run's table
  initialisation. Assumes Criteo's 26 features (initial_state checks the shapes). None
  with several processes, where every process must launch the same programs in order.
  """
  if jax.process_count() > 1:
    return None

  def compute():
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    key = jax.random.key(config.seed)
    num_tables = len(cf.SPARSE_NAMES)
    model, tx = dense_model(config), dense_transform(config)
    return init_dense_state(model, tx, mesh, key, num_tables, config.embedding_dim)

  pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dense-init")
  future = pool.submit(compute)
  pool.shutdown(wait=False)
  return future


def _shapes(tree) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
  return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def initial_state(c: Components, dense_ahead: Future | None = None) -> TrainState:
  """A freshly initialised, already sharded TrainState (seed from the config).

  ``dense_ahead``: dense_state_ahead's future; its arrays are used where their shapes are
  this model's (the same values either way), else the dense state is computed here.
  """
  key = jax.random.key(c.config.seed)
  dense = None
  if dense_ahead is not None and dense_ahead.exception() is None:
    wanted = jax.eval_shape(
      dense_init(c.model, c.dense_tx, len(c.layout.placements), c.layout.dim), key
    )
    ready = dense_ahead.result()
    dense = ready if _shapes(ready) == _shapes(wanted) else None
  return create_train_state(
    c.model,
    c.layout,
    c.sparse_opt,
    c.dense_tx,
    c.mesh,
    key,
    managed=c.managed,
    dense=dense,
  )
