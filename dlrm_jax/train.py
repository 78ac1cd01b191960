"""train_and_evaluate(config): the training loop and the wiring of all parts."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dlrm_jax import mesh as mesh_lib
from dlrm_jax import metrics as metrics_lib
from dlrm_jax import reporting
from dlrm_jax.config import Config
from dlrm_jax.data.loader import BatchLoader, check_batch_ids, open_split
from dlrm_jax.datasets import resolve_dataset
from dlrm_jax.model import DenseModel
from dlrm_jax.planner import EmbeddingLayout, build_layout, choose_plans, plan_table
from dlrm_jax.specs import table_specs
from dlrm_jax.sparse_optim import SparseOptimizer
from dlrm_jax.train_state import TrainState, create_train_state, dense_optimizer
from dlrm_jax.train_step import batch_shardings, make_eval_step, make_train_step


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
  sparse_opt = SparseOptimizer(config.optimizer, config.learning_rate, eps=config.adagrad_eps,
                               initial_accumulator=config.adagrad_initial_accumulator)
  model_shards = mesh_lib.model_size(mesh)
  plans = choose_plans(specs, model_shards, default=config.sharding,
                       overrides=dict(config.table_sharding))
  memory = int(config.device_memory_gb * 2**30) if config.device_memory_gb else None
  layout = build_layout(specs, plans, model_shards, device_memory_bytes=memory,
                        slot_floats_per_row=sparse_opt.slot_floats_per_row(config.embedding_dim))
  model = DenseModel(config.bottom_mlp, config.top_mlp, config.interaction,
                     config.interaction_itself)
  dense_tx = dense_optimizer(config.optimizer, config.learning_rate, eps=config.adagrad_eps,
                             initial_accumulator=config.adagrad_initial_accumulator)
  return Components(config, mesh, layout, model, sparse_opt, dense_tx, tuple(table_sizes))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local NumPy slices -> global batch-sharded jax.Arrays."""
  shardings = batch_shardings(mesh)
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def evaluate(c: Components, state: TrainState, eval_step: Callable, processed_dir: str,
             split: str) -> dict[str, float]:
  """Exact metrics over every example of ``split``."""
  loader = BatchLoader(open_split(processed_dir, split), c.config.eval_batch_size, shuffle=False,
                       process_index=jax.process_index(), process_count=jax.process_count())
  logits, labels, masks = [], [], []
  for batch in loader.iterate():
    check_batch_ids(batch["sparse"], c.table_sizes)
    gbatch = to_global(batch, c.mesh)
    out = eval_step(state, gbatch)
    for dest, arr in ((logits, out), (labels, gbatch["label"]), (masks, gbatch["mask"])):
      dest.append(np.asarray(multihost_utils.process_allgather(arr, tiled=True)))
  keep = np.concatenate(masks) > 0
  return metrics_lib.evaluate_predictions(np.concatenate(labels)[keep],
                                          np.concatenate(logits)[keep])


def train_and_evaluate(config: Config) -> dict[str, Any]:
  """Trains per ``config``, evaluates validation and test; returns the final metrics."""
  mesh = mesh_lib.make_mesh(config.mesh_shape)
  config.validate(mesh.devices.size)
  is_chief = jax.process_index() == 0
  show = config.progress and is_chief
  processed, meta = resolve_dataset(config, progress=show)
  c = build_components(config, mesh, meta["table_sizes"], meta["sparse_names"])
  if is_chief:
    reporting.write_config(config.workdir, config)
    logging.info("mesh %s; embedding plan:\n%s", dict(mesh.shape),
                 plan_table(c.layout, c.sparse_opt.slot_floats_per_row(config.embedding_dim)))
  log = reporting.MetricsLog(config.workdir, enabled=is_chief)
  best = meta.get("best_possible_auc")

  train_loader = BatchLoader(open_split(processed, "train"), config.batch_size, shuffle=True,
                             seed=config.seed, process_index=jax.process_index(),
                             process_count=jax.process_count())
  total_steps = config.max_steps or config.num_epochs * train_loader.batches_per_epoch
  state = create_train_state(c.model, c.layout, c.sparse_opt, c.dense_tx, mesh,
                             jax.random.key(config.seed))
  abstract = jax.eval_shape(lambda s: s, state)
  train_step = make_train_step(c.model, c.layout, c.sparse_opt, c.dense_tx, mesh, abstract)
  eval_step = make_eval_step(c.model, c.layout, mesh, abstract)

  def run_eval(split: str, step: int) -> dict[str, float]:
    result = evaluate(c, state, eval_step, processed, split)
    record = {"step": step, "split": split, **result}
    if best is not None:
      record["best_possible_auc"] = best.get(split)
    log.write(record)
    logging.info("step %d %s: %s", step, split, record)
    return result

  throughput = reporting.Throughput()
  pending_losses = []
  bar = reporting.progress_bar(total_steps, 0, config.batch_size, show, "train")
  for step, batch in enumerate(train_loader.iterate(0, total_steps)):
    check_batch_ids(batch["sparse"], c.table_sizes)
    state, step_metrics = train_step(state, to_global(batch, mesh))
    pending_losses.append(step_metrics["loss"])
    throughput.add(config.batch_size)
    bar.update(config.batch_size)
    done = step + 1
    if done % config.log_every_steps == 0 or done == total_steps:
      loss = float(np.mean(jax.device_get(pending_losses)))  # the only per-N-steps sync
      pending_losses.clear()
      if not np.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {loss} at step {done}; lower "
                                 f"--learning_rate or check the input data")
      rate = throughput.mark()
      log.write({"step": done, "loss": loss, "samples_per_sec": rate})
      bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    if config.eval_every_steps and done % config.eval_every_steps == 0 and done < total_steps:
      run_eval("validation", done)
  bar.close()
  results = {"validation": run_eval("validation", total_steps),
             "test": run_eval("test", total_steps), "steps": total_steps}
  if best is not None:
    results["best_possible_auc"] = best
  return results
