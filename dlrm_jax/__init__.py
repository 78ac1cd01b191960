"""dlrm-jax: DLRM in JAX/Flax with sharded embedding tables; the public API (docs/api.md).

Every name below is loaded on first use (PEP 562), so ``import dlrm_jax`` and
``import dlrm_jax.data...`` stay cheap and import neither jax nor flax. A name's
home module is in ``_EXPORTS``; nothing else in the package imports this file.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it. One line each, so that a module move is a one-line fix here
# (tests/test_public_api.py checks every name resolves and is documented in docs/api.md).
_EXPORTS = {
  # Flax modules (model/)
  "DenseModel": "dlrm_jax.model.dlrm",
  "MLP": "dlrm_jax.model.mlp",
  "EmbeddingMLP": "dlrm_jax.model.mlp",
  "dot_interaction": "dlrm_jax.model.interaction",
  "cat_interaction": "dlrm_jax.model.interaction",
  "interaction_width": "dlrm_jax.model.interaction",
  "VectorCrossNet": "dlrm_jax.model.cross",
  "LowRankCrossNet": "dlrm_jax.model.cross",
  "stack_features": "dlrm_jax.model.cross",
  # Tables across devices (sharding/)
  "make_mesh": "dlrm_jax.sharding.mesh",
  "model_size": "dlrm_jax.sharding.mesh",
  "DATA_AXIS": "dlrm_jax.sharding.mesh",
  "MODEL_AXIS": "dlrm_jax.sharding.mesh",
  "TableSpec": "dlrm_jax.sharding.specs",
  "table_specs": "dlrm_jax.sharding.specs",
  "EmbeddingLayout": "dlrm_jax.sharding.planner",
  "plan_layout": "dlrm_jax.sharding.planner",
  "plan_table": "dlrm_jax.sharding.planner",
  "lookup": "dlrm_jax.sharding.exchange",
  "route_gradients": "dlrm_jax.sharding.exchange",
  # Optimizers (optim/)
  "SparseOptimizer": "dlrm_jax.optim.sparse",
  "dense_optimizer": "dlrm_jax.optim.dense",
  "learning_rate": "dlrm_jax.optim.schedules",
  # Training (train/)
  "TrainState": "dlrm_jax.train.state",
  "create_train_state": "dlrm_jax.train.state",
  "make_train_step": "dlrm_jax.train.step",
  "make_eval_step": "dlrm_jax.train.step",
  "batch_shardings": "dlrm_jax.train.step",
  "to_global": "dlrm_jax.train.step",
  "roc_auc": "dlrm_jax.train.metrics",
  # Data (data/)
  "prepare_synthetic": "dlrm_jax.data.synthetic",
  "open_split": "dlrm_jax.data.store",
  "BatchLoader": "dlrm_jax.data.loader",
  # Checkpoints (checkpoint/)
  "save_checkpoint": "dlrm_jax.checkpoint.simple",
  "restore_checkpoint": "dlrm_jax.checkpoint.simple",
  "logical_table": "dlrm_jax.checkpoint.table_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'dlrm_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
