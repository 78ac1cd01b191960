"""train_and_evaluate(config): the training loop, its evaluations and checkpoints."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import Future
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from dlrm_jax.checkpoint import manager as checkpointing
from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data import checksums, prefetch
from dlrm_jax.data.datasets import will_preprocess
from dlrm_jax.data.loader import BatchLoader, resolve_shuffle
from dlrm_jax.data.store import open_split
from dlrm_jax.faults import Preempted, TrainingDiverged
from dlrm_jax.reporting import managed_ids
from dlrm_jax.reporting import metrics_log as reporting
from dlrm_jax.reporting.timings import Timings
from dlrm_jax.run.dry_run import check_before_allocating
from dlrm_jax.run.memory_plan import compile_in_background, run_programs
from dlrm_jax.run.preemption import PreemptionGuard
from dlrm_jax.sharding.planner import plan_table
from dlrm_jax.train.calls import compiled_on_first_call, device_calls, flat_metrics
from dlrm_jax.train.components import (
  Components,
  abstract_train_state,
  dense_state_ahead,
  initial_state,
  load_components,
  parameter_counts,
  row_floats,
)
from dlrm_jax.train.evaluation import evaluate


def train_and_evaluate(config: Config) -> dict[str, Any]:
  """Trains per ``config`` (resuming from --workdir's checkpoints), evaluates validation and test.

  Raises Preempted after a signal (a checkpoint is saved first), TrainingDiverged
  on a non-finite loss, CheckpointError on unusable checkpoints.
  """
  is_chief = jax.process_index() == 0
  show = config.progress and is_chief
  timings = Timings()
  # A fresh run initialises its dense parameters while raw text is preprocessed
  # (--device_memory_gb compiles the whole init first, to check its memory).
  fresh = not os.path.isdir(os.path.join(config.workdir, checkpointing.CHECKPOINT_DIR))
  early = fresh and not config.device_memory_gb and will_preprocess(config)
  dense_ahead = dense_state_ahead(config) if early else None
  with timings.phase("data_preparation"):
    c, processed, meta = load_components(config, progress=show)
  mesh = c.mesh
  if is_chief:
    reporting.write_config(config.workdir, config)
    reporting.announce(
      f"mesh {dict(mesh.shape)}; embedding plan:\n"
      + plan_table(c.layout, row_floats(config, c.sparse_opt))
    )
  best = meta.get("best_possible_auc")
  train_loader = _train_loader(config, processed)
  total_steps = config.max_steps or config.num_epochs * train_loader.batches_per_epoch

  store = checkpointing.CheckpointStore(config.workdir, keep=config.keep_checkpoints)
  identity = checkpointing.identity(
    config, meta["sparse_names"], c.table_sizes, order=train_loader.order
  )
  try:
    return _train(
      c,
      processed,
      best,
      train_loader,
      total_steps,
      store,
      identity,
      timings,
      dense_ahead,
    )
  finally:
    store.wait()  # an asynchronous save must be complete before the process exits
    store.close()


def _train_loader(config: Config, processed: str) -> BatchLoader:
  """The training split's loader; damaged files and unworkable shuffle flags stop the run here."""
  try:
    arrays = open_split(processed, "train")
    order, why = resolve_shuffle(config.shuffle, arrays)
    loader = BatchLoader(
      arrays,
      config.batch_size,
      shuffle=True,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      order=order,
      block_rows=config.shuffle_block_rows,
      buffer_blocks=config.shuffle_buffer_blocks,
      checksums=checksums.load(processed, "train", arrays.num_rows),
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if jax.process_index() == 0:
    blocks = (
      f" of {config.shuffle_block_rows:,} rows, {config.shuffle_buffer_blocks} per buffer"
      if order == "blocks"
      else ""
    )
    reporting.announce(f"training order: {order} shuffle{blocks} ({why})")
  return loader


def _train(
  c: Components,
  processed: str,
  best: dict | None,
  train_loader: BatchLoader,
  total_steps: int,
  store: checkpointing.CheckpointStore,
  ident: dict[str, Any],
  timings: Timings,
  dense_ahead: Future | None = None,
) -> dict[str, Any]:
  config, mesh = c.config, c.mesh
  is_chief = jax.process_index() == 0
  abstract = abstract_train_state(c)
  programs = run_programs(c, abstract)
  init = ahead = None
  if config.device_memory_gb:
    # Every program's peak from the compiler, before any table is allocated; the
    # calls below reuse these executables, so this adds only the init's compilation.
    with timings.phase("compilation"):
      init = check_before_allocating(c, programs)
  else:
    # XLA compiles the steps while the tables are initialised or restored. The single step
    # serves only a resume mid-call and the steps after the last multiple of K.
    k = config.resolved_steps_per_call
    single = total_steps % k != 0 or store.latest_step() is not None
    ahead = compile_in_background(c, abstract, programs, skip=() if single else ("train 1 step",))
  reached_before = False
  # Load or initialise, never both.
  with timings.phase("table_initialisation"):
    restored = store.restore_latest_good(
      c.layout, abstract, mesh, ident, resume=True, managed=c.managed
    )
    if restored is None:
      key = jax.random.key(config.seed)
      state = jax.block_until_ready(init(key) if init else initial_state(c, dense_ahead))
  if restored is not None:
    state, start = restored.state, restored.step
    pending_losses = [np.float32(x) for x in restored.meta.get("pending_losses", [])]
    # Training accuracy since the last log line: per-step correct and count sums.
    pending_correct, pending_count = ([x] for x in restored.meta.get("pending_accuracy", [0, 0]))
    reporting.announce(f"resuming from {restored.path} (step {start})")
    if _target_reached_before(restored.meta, config.target_auc):
      # The run stopped at --target_auc there: it is finished, only re-evaluate.
      reporting.announce(
        f"--target_auc={config.target_auc:g} was reached at step {start} "
        f"(validation AUC {restored.meta['validation']['auc']:.5f}); not training further"
      )
      total_steps, reached_before = start, True
  else:
    start, pending_losses = 0, []
    pending_correct, pending_count = [], []
  last_good = start if restored is not None else None
  log = reporting.MetricsLog(
    config.workdir, enabled=is_chief, resume_step=start if restored is not None else None
  )
  log.write_config(config, start)
  counts = parameter_counts(c)
  k = config.resolved_steps_per_call
  reporting.announce(
    f"parameters: dense {counts['dense']:,}, embedding {counts['embedding']:,}, "
    f"total {counts['total']:,}; {k} train step(s) per device call"
  )
  if restored is None:  # a resumed file keeps its step-0 line
    log.write({"step": 0, "parameters": counts})
  multi_step = compiled_on_first_call(programs["train"], timings, ahead)
  train_step = (
    compiled_on_first_call(programs["train 1 step"], timings, ahead) if k > 1 else multi_step
  )
  eval_step = compiled_on_first_call(programs["eval"], timings, ahead)
  snapshot = programs["checkpoint"]
  managed_fields = _managed_fields(c)
  layout_meta = checkpointing.layout_meta(c.layout, abstract)

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

  def save(step: int, validation: dict[str, float] | None = None, *, reached: bool = False) -> None:
    with timings.phase("checkpoint_waits"):
      _save(step, validation, reached)

  def _save(step: int, validation: dict[str, float] | None, reached: bool) -> None:
    nonlocal last_good
    tree, finite = snapshot(state)
    losses = [float(x) for x in flat_metrics(pending_losses)]
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
        "pending_accuracy": [
          float(np.sum(flat_metrics(pending_correct))),
          float(np.sum(flat_metrics(pending_count))),
        ],
        "data_position": {"seed": config.seed, "batch_size": config.batch_size, "next_step": step},
        "validation": validation,
        "layout": layout_meta,
        # A rerun of a run stopped by --target_auc only re-evaluates (see _target_reached_before).
        "target_reached": reached,
        "target_auc": config.target_auc,
      },
      auc=(validation or {}).get("auc"),
    )
    last_good = step

  def run_eval(split: str, step: int) -> dict[str, float]:
    with timings.phase("evaluation"):
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
  calls = device_calls(c, train_loader, start, total_steps)
  with PreemptionGuard() as guard, timings.phase("training"):
    # One iteration per device call: K steps (--steps_per_call) on stacked
    # batches, or single steps up to the next multiple of K (resume, the end).
    for call_start, n, batches in prefetch.background(calls, depth=1):
      if n == k > 1:
        state, step_metrics = multi_step(state, batches)
        call_metrics = [step_metrics]  # each f32[K]
      else:
        call_metrics = []
        for batch in batches:
          state, step_metrics = train_step(state, batch)
          call_metrics.append(step_metrics)
      for m in call_metrics:
        pending_losses.append(m["loss"])
        pending_correct.append(m["correct"])
        pending_count.append(m["count"])
      throughput.add(config.batch_size * n)
      bar.update(config.batch_size * n)
      done = call_start + n
      if done % config.log_every_steps == 0 or done == total_steps:
        losses = flat_metrics(pending_losses)  # the only per-N-steps sync
        if not np.all(np.isfinite(losses)):
          first = done - len(losses) + 1 + int(np.argmin(np.isfinite(losses)))
          raise diverged(first, f"non-finite training loss {losses[first - done - 1]}")
        loss = float(np.mean(losses))
        pending_losses.clear()
        # Summed on the host in float64: the mean since the last line, not a mean of means.
        correct, count = (
          np.sum(flat_metrics(x), dtype=np.float64) for x in (pending_correct, pending_count)
        )
        pending_correct.clear()
        pending_count.clear()
        log.write(
          {
            "step": done,
            "loss": loss,
            "accuracy": float(correct / count) if count else None,
            "lr": float(np.ravel(step_metrics["lr"])[-1]),
            "samples_per_sec": throughput.mark(),
            **managed_fields(done, state),
          }
        )
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
      validation = None
      if config.eval_every_steps and done % config.eval_every_steps == 0 and done < total_steps:
        validation = run_eval("validation", done)
      reached = bool(
        validation is not None and config.target_auc and validation["auc"] >= config.target_auc
      )
      stop = guard.requested
      if jax.process_count() > 1:
        # Every process must take part in the save: agree on a signal that may
        # have reached only some of them, at log boundaries to keep syncs rare.
        stop = done % config.log_every_steps == 0 and bool(
          np.any(multihost_utils.process_allgather(np.int32(guard.requested)))
        )
      if done < total_steps and (validation is not None or (every and done % every == 0)):
        save(done, validation, reached=reached)
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
      if reached:
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
  test = run_eval("test", total_steps)
  with timings.phase("checkpoint_waits"):
    store.wait()
  log.write({"step": total_steps, **timings.record()})
  reporting.announce(timings.text())
  results = {
    "validation": validation,
    "test": test,
    "steps": total_steps,
    "checkpoint": store.step_path(total_steps),
    "target_reached": target_reached or reached_before,
  }
  if best is not None:
    results["best_possible_auc"] = best
  log.close()  # flushed after every record, so a run that raises loses no event either
  return results


def _managed_fields(c: Components):
  """``fields(step, state)``: the training line's managed counters (announced too); {} unless
  --id_mapping=managed."""
  if c.managed is None:
    return lambda step, state: {}
  fetch = managed_ids.counter_fetcher(c.mesh)
  names = [p.spec.name for p in c.layout.placements]
  capacity = dict(zip(names, c.managed.capacity(), strict=True))

  def fields(step: int, state) -> dict:
    record = managed_ids.counter_record(fetch(state.managed), names)
    reporting.announce(managed_ids.summary(step, record, capacity))
    return record

  return fields


def _target_reached_before(meta: dict[str, Any], target_auc: float) -> bool:
  """Whether a checkpoint was saved where its run stopped at a validation AUC >= ``target_auc``.

  A rerun with a higher --target_auc (or none) trains on instead.
  """
  auc = (meta.get("validation") or {}).get("auc")
  return bool(meta.get("target_reached") and target_auc and auc is not None and auc >= target_auc)
