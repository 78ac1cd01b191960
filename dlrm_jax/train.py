"""train_and_evaluate(config): the training loop, checkpoints, and the wiring of all parts."""

from __future__ import annotations

import dataclasses
import json
import signal
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dlrm_jax import checkpointing, reporting
from dlrm_jax import mesh as mesh_lib
from dlrm_jax import metrics as metrics_lib
from dlrm_jax.config import Config
from dlrm_jax.data.loader import BatchLoader, SplitArrays, check_batch_ids, open_split
from dlrm_jax.datasets import check_data_matches_model, resolve_dataset
from dlrm_jax.faults import Preempted, TrainingDiverged
from dlrm_jax.model import DenseModel
from dlrm_jax.planner import EmbeddingLayout, plan_layout, plan_table
from dlrm_jax.preemption import PreemptionGuard
from dlrm_jax.sparse_optim import SparseOptimizer
from dlrm_jax.specs import table_specs
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


def predict_logits(
  c: Components, state: TrainState, eval_step: Callable, arrays: SplitArrays
) -> tuple[np.ndarray, np.ndarray]:
  """(logits f32[N], labels f32[N]) of every row of ``arrays``, in order, on every process."""
  loader = BatchLoader(
    arrays,
    c.config.eval_batch_size,
    shuffle=False,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  logits, labels, masks = [], [], []
  for batch in loader.iterate():
    check_batch_ids(batch["sparse"], c.table_sizes)
    gbatch = to_global(batch, c.mesh)
    out = eval_step(state, gbatch)
    for dest, arr in ((logits, out), (labels, gbatch["label"]), (masks, gbatch["mask"])):
      dest.append(np.asarray(multihost_utils.process_allgather(arr, tiled=True)))
  keep = np.concatenate(masks) > 0  # the last batch's padding
  return np.concatenate(logits)[keep], np.concatenate(labels)[keep]


def evaluate(
  c: Components, state: TrainState, eval_step: Callable, processed_dir: str, split: str
) -> dict[str, float]:
  """Exact metrics over every example of ``split``."""
  logits, labels = predict_logits(c, state, eval_step, open_split(processed_dir, split))
  return metrics_lib.evaluate_predictions(labels, logits)


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


def train_and_evaluate(config: Config) -> dict[str, Any]:
  """Trains per ``config`` (resuming from --workdir's checkpoints), evaluates validation and test.

  Raises Preempted after a signal (a checkpoint is saved first), TrainingDiverged
  on a non-finite loss, CheckpointError on unusable checkpoints.
  """
  is_chief = jax.process_index() == 0
  show = config.progress and is_chief
  c, processed, meta = load_components(config, progress=show)
  mesh = c.mesh
  if is_chief:
    reporting.write_config(config.workdir, config)
    reporting.announce(
      f"mesh {dict(mesh.shape)}; embedding plan:\n"
      + plan_table(c.layout, c.sparse_opt.slot_floats_per_row(config.embedding_dim))
    )
  best = meta.get("best_possible_auc")
  train_loader = BatchLoader(
    open_split(processed, "train"),
    config.batch_size,
    shuffle=True,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  total_steps = config.max_steps or config.num_epochs * train_loader.batches_per_epoch

  store = checkpointing.CheckpointStore(config.workdir, keep=config.keep_checkpoints)
  try:
    return _train(c, processed, best, train_loader, total_steps, store, identity_of(c, meta))
  finally:
    store.wait()  # an asynchronous save must be complete before the process exits
    store.close()


def _train(
  c: Components,
  processed: str,
  best: dict | None,
  train_loader: BatchLoader,
  total_steps: int,
  store: checkpointing.CheckpointStore,
  ident: dict[str, Any],
) -> dict[str, Any]:
  config, mesh = c.config, c.mesh
  is_chief = jax.process_index() == 0
  abstract = abstract_train_state(c)
  # Load or initialise, never both.
  restored = store.restore_latest_good(c.layout, abstract, mesh, ident, resume=True)
  if restored is not None:
    state, start = restored.state, restored.step
    pending_losses = [np.float32(x) for x in restored.meta.get("pending_losses", [])]
    reporting.announce(f"resuming from {restored.path} (step {start})")
  else:
    state = create_train_state(
      c.model, c.layout, c.sparse_opt, c.dense_tx, mesh, jax.random.key(config.seed)
    )
    start, pending_losses = 0, []
  last_good = start if restored is not None else None
  log = reporting.MetricsLog(
    config.workdir, enabled=is_chief, resume_step=start if restored is not None else None
  )
  train_step = make_train_step(c.model, c.layout, c.sparse_opt, c.dense_tx, mesh, abstract)
  eval_step = make_eval_step(c.model, c.layout, mesh, abstract)
  snapshot = checkpointing.make_snapshot(c.layout, abstract, mesh, config.seed)

  def last_good_text() -> str:
    if last_good is None:
      return "no checkpoint was saved before it"
    return f"the last good checkpoint is {store.step_path(last_good)} (step {last_good}), kept"

  def diverged(step: int, what: str) -> TrainingDiverged:
    if last_good is not None:
      store.protect(last_good)
    return TrainingDiverged(
      f"{what} at step {step}; {last_good_text()}. Lower "
      f"--learning_rate or check the input data, in a new --workdir."
    )

  def save(step: int, validation: dict[str, float] | None = None) -> None:
    nonlocal last_good
    tree, finite = snapshot(state)
    losses = [float(x) for x in jax.device_get(pending_losses)]
    if not bool(finite) or not np.all(np.isfinite(losses)):
      raise diverged(step, "non-finite values in the training state")
    store.save(
      step,
      tree,
      {
        "format": checkpointing.FORMAT,
        "step": step,
        "identity": ident,
        "finite": True,
        "config": json.loads(config.to_json()),
        "pending_losses": losses,
        "data_position": {"seed": config.seed, "batch_size": config.batch_size, "next_step": step},
        "validation": validation,
      },
      auc=(validation or {}).get("auc"),
    )
    last_good = step

  def run_eval(split: str, step: int) -> dict[str, float]:
    result = evaluate(c, state, eval_step, processed, split)
    record = {"step": step, "split": split, **result}
    if best is not None:
      record["best_possible_auc"] = best.get(split)
    log.write(record)
    reporting.announce(
      f"step {step} {split}: AUC {result['auc']:.4f}  log loss "
      f"{result['logloss']:.4f}  accuracy {result['accuracy']:.4f}"
    )
    return result

  throughput = reporting.Throughput()
  bar = reporting.progress_bar(
    total_steps, start, config.batch_size, config.progress and is_chief, "train"
  )
  every = config.checkpoint_every_steps
  target_reached = False
  with PreemptionGuard() as guard:
    for step, batch in enumerate(train_loader.iterate(start, max(0, total_steps - start)), start):
      check_batch_ids(batch["sparse"], c.table_sizes)
      state, step_metrics = train_step(state, to_global(batch, mesh))
      pending_losses.append(step_metrics["loss"])
      throughput.add(config.batch_size)
      bar.update(config.batch_size)
      done = step + 1
      if done % config.log_every_steps == 0 or done == total_steps:
        losses = np.asarray(jax.device_get(pending_losses))  # the only per-N-steps sync
        if not np.all(np.isfinite(losses)):
          first = done - len(losses) + 1 + int(np.argmin(np.isfinite(losses)))
          raise diverged(first, f"non-finite training loss {losses[first - done - 1]}")
        loss = float(np.mean(losses))
        pending_losses.clear()
        log.write({"step": done, "loss": loss, "samples_per_sec": throughput.mark()})
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
      validation = None
      if config.eval_every_steps and done % config.eval_every_steps == 0 and done < total_steps:
        validation = run_eval("validation", done)
      stop = guard.requested
      if jax.process_count() > 1:
        # Every process must take part in the save: agree on a signal that may
        # have reached only some of them, at log boundaries to keep syncs rare.
        stop = done % config.log_every_steps == 0 and bool(
          np.any(multihost_utils.process_allgather(np.int32(guard.requested)))
        )
      if done < total_steps and (validation is not None or (every and done % every == 0)):
        save(done, validation)
      elif stop and done < total_steps:
        save(done)
      if stop and done < total_steps:
        store.wait()
        raise Preempted(
          f"stopped by {signal.Signals(guard.signum).name} at step {done} of "
          f"{total_steps}; checkpoint saved to {store.step_path(done)}. To resume, "
          f"run the same command again (same --workdir={config.workdir}).",
          guard.signum,
        )
      if validation is not None and config.target_auc and validation["auc"] >= config.target_auc:
        # --target_auc (MLPerf): stop here; this validation is the final one, already saved.
        reporting.announce(
          f"validation AUC {validation['auc']:.5f} reached "
          f"--target_auc={config.target_auc:g} at step {done}; stopping"
        )
        target_reached, total_steps = True, done
        break
  bar.close()
  if not target_reached:
    validation = run_eval("validation", total_steps)
    if start < total_steps:
      save(total_steps, validation)
  results = {
    "validation": validation,
    "test": run_eval("test", total_steps),
    "steps": total_steps,
    "checkpoint": store.step_path(total_steps),
    "target_reached": target_reached,
  }
  if best is not None:
    results["best_possible_auc"] = best
  return results
