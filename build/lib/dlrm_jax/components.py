"""Building a run: mesh, dataset, plan, model and optimizers, and the state to start from.

Training (train.py), evaluation and prediction (inference.py) and export
(export.py) are siblings on top of this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dlrm_jax import checkpointing
from dlrm_jax import mesh as mesh_lib
from dlrm_jax.config import Config
from dlrm_jax.datasets import check_data_matches_model, resolve_dataset
from dlrm_jax.model import DenseModel
from dlrm_jax.planner import EmbeddingLayout, plan_layout
from dlrm_jax.sparse_optim import SparseOptimizer
from dlrm_jax.specs import table_specs
from dlrm_jax.train_state import TrainState, create_train_state, dense_optimizer
from dlrm_jax.train_step import batch_shardings, make_eval_step


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


def build_components(config: Config, mesh: Mesh, table_sizes, table_names) -> Components:
  config.validate(mesh.devices.size)
  specs = table_specs(list(table_names), list(table_sizes), config.embedding_dim)
  sparse_opt = SparseOptimizer(
    config.optimizer,
    config.learning_rate,
    eps=config.adagrad_eps,
    initial_accumulator=config.adagrad_initial_accumulator,
  )
  model_shards = mesh_lib.model_size(mesh)
  memory = int(config.device_memory_gb * 2**30) if config.device_memory_gb else None
  layout = plan_layout(
    specs,
    model_shards,
    default=config.sharding,
    overrides=dict(config.table_sharding),
    device_memory_bytes=memory,
    slot_floats_per_row=sparse_opt.slot_floats_per_row(config.embedding_dim),
  )
  model = DenseModel(
    config.bottom_mlp, config.top_mlp, config.interaction, config.interaction_itself
  )
  dense_tx = dense_optimizer(
    config.optimizer,
    config.learning_rate,
    eps=config.adagrad_eps,
    initial_accumulator=config.adagrad_initial_accumulator,
  )
  return Components(config, mesh, layout, model, sparse_opt, dense_tx, tuple(table_sizes))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local NumPy slices -> global batch-sharded jax.Arrays."""
  shardings = batch_shardings(mesh)
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def abstract_train_state(c: Components) -> TrainState:
  """Shapes and dtypes of the TrainState ``c`` would create; allocates nothing."""
  return jax.eval_shape(
    lambda key: create_train_state(c.model, c.layout, c.sparse_opt, c.dense_tx, c.mesh, key),
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
  c = build_components(config, mesh, meta["table_sizes"], meta["sparse_names"])
  check_data_matches_model(config, meta, c.table_sizes)  # before any id reaches a table
  return c, processed, meta


def identity_of(c: Components, meta: dict[str, Any]) -> dict[str, Any]:
  return checkpointing.identity(c.config, meta["sparse_names"], c.table_sizes)


@dataclasses.dataclass
class Loaded:
  """A restored model ready to score."""

  components: Components
  processed_dir: str
  metadata: dict[str, Any]
  state: TrainState
  checkpoint: str
  eval_step: Any


def load(config: Config) -> Loaded:
  """The model of --checkpoint (latest, best or a path) on this run's mesh and plan."""
  c, processed, meta = load_components(
    config, progress=config.progress and jax.process_index() == 0
  )
  abstract = abstract_train_state(c)
  restored = checkpointing.load_for_inference(
    config.checkpoint, config.workdir, c.layout, abstract, c.mesh, identity_of(c, meta)
  )
  logging.info("loaded %s (step %d)", restored.path, restored.step)
  return Loaded(
    c,
    processed,
    meta,
    restored.state,
    restored.path,
    make_eval_step(c.model, c.layout, c.mesh, abstract),
  )


def initial_state(c: Components) -> TrainState:
  """A freshly initialised, already sharded TrainState (seed from the config)."""
  return create_train_state(
    c.model, c.layout, c.sparse_opt, c.dense_tx, c.mesh, jax.random.key(c.config.seed)
  )
