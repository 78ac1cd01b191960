"""Orbax checkpoints of logical tables: save, verify, restore on any mesh, skip damaged ones."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint import checkpoint_managers as policies

from dlrm_jax import table_io
from dlrm_jax.config import Config
from dlrm_jax.faults import CheckpointError, CheckpointMismatch
from dlrm_jax.planner import EmbeddingLayout
from dlrm_jax.train_state import TrainState, state_shardings

FORMAT = "dlrm_jax/checkpoint/1"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
PROTECTED_FILE = "protected_checkpoints.json"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Fields that define the model: a checkpoint never loads into another value.
MODEL_FIELDS = (
  "embedding_dim",
  "bottom_mlp",
  "top_mlp",
  "interaction",
  "interaction_itself",
  "optimizer",
  "table_names",
  "table_sizes",
)
# Fields that define the training trajectory: resuming with another value
# would silently give a different model than an uninterrupted run.
TRAINING_FIELDS = (
  "seed",
  "learning_rate",
  "batch_size",
  "adagrad_eps",
  "adagrad_initial_accumulator",
  "dataset",
  "synthetic_rows",
  "synthetic_seed",
  "max_ind_range",
  "min_frequency",
)


@dataclasses.dataclass
class Restored:
  step: int
  state: TrainState
  meta: dict[str, Any]
  path: str


def identity(config: Config, table_names: Sequence[str], table_sizes: Sequence[int]) -> dict:
  """The fields compared on restore, as JSON values."""
  values = dataclasses.asdict(config)
  out = {k: values[k] for k in MODEL_FIELDS + TRAINING_FIELDS if k in values}
  out.update(table_names=list(table_names), table_sizes=[int(s) for s in table_sizes])
  return json.loads(json.dumps(out))  # tuples -> lists, as they come back from JSON


def check_compatible(meta: dict, ident: dict, path: str, *, resume: bool) -> None:
  """Raises CheckpointMismatch listing every differing field (model fields always)."""
  saved = meta.get("identity", {})
  fields = MODEL_FIELDS + (TRAINING_FIELDS if resume else ())
  diff = [
    f"{f}: checkpoint {saved.get(f)!r}, now {ident.get(f)!r}"
    for f in fields
    if saved.get(f) != ident.get(f)
  ]
  if diff:
    what = "resume training from" if resume else "load"
    raise CheckpointMismatch(
      f"refusing to {what} {path}: it was saved with a different configuration.\n  "
      + "\n  ".join(diff)
      + "\nUse the flags it was saved with, or a new --workdir."
    )


def _sds(x, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def saved_abstract(layout: EmbeddingLayout, abstract_state: TrainState, mesh: Mesh) -> dict:
  """The saved tree's shapes with ``mesh``'s shardings: the restore target."""
  shardings = state_shardings(mesh, abstract_state)
  rep = NamedSharding(mesh, P())
  return {
    "step": _sds(abstract_state.step, rep),
    "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
    "params": jax.tree.map(_sds, abstract_state.params, shardings.params),
    "opt_state": flax.serialization.to_state_dict(
      jax.tree.map(_sds, abstract_state.opt_state, shardings.opt_state)
    ),
    **table_io.logical_abstract(layout, abstract_state, mesh),
  }


def make_snapshot(layout: EmbeddingLayout, abstract_state: TrainState, mesh: Mesh, seed: int):
  """Jitted ``state -> (tree to save, all finite?)``.

  The tree holds fresh copies, so the next (donating) train step cannot free
  arrays an asynchronous save is still reading.
  """
  target = saved_abstract(layout, abstract_state, mesh)
  out_shardings = (jax.tree.map(lambda s: s.sharding, target), NamedSharding(mesh, P()))

  def snapshot(state: TrainState):
    tree = {
      "step": jnp.copy(state.step),
      "rng": jax.random.key_data(jax.random.key(seed)),
      "params": jax.tree.map(jnp.copy, state.params),
      "opt_state": flax.serialization.to_state_dict(jax.tree.map(jnp.copy, state.opt_state)),
      **table_io.extract_all(layout, state.tables, state.slots),
    }
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats]))
    return tree, finite

  return jax.jit(snapshot, out_shardings=out_shardings)


def _is_chief() -> bool:
  return jax.process_index() == 0


class CheckpointStore:
  """workdir/checkpoints: the last ``keep`` steps, the best by validation AUC, protected steps."""

  def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.read_only = read_only
    self.notes: list[str] = []
    if not read_only:
      self._report_half_written()
    policy = policies.AnyPreservationPolicy(
      [
        policies.LatestN(n=max(keep, 1)),
        policies.BestN(
          get_metric_fn=lambda m: m["auc"], n=1, keep_checkpoints_without_metrics=False
        ),
        policies.CustomSteps(steps=self.protected_steps()),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      enable_async_checkpointing=True,
      read_only=read_only,
      create=not read_only,
      cleanup_tmp_directories=not read_only,
    )
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f"no checkpoints at {self.directory}")
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def _note(self, message: str) -> None:
    logging.warning("%s", message)
    self.notes.append(message)

  def _report_half_written(self) -> None:
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      if TMP_SUFFIX in name:
        self._note(
          f"checkpoint {os.path.join(self.directory, name)} was left half-written "
          f"(its save was interrupted); ignoring it"
        )

  def protected_steps(self) -> list[int]:
    path = os.path.join(self.workdir, PROTECTED_FILE)
    if not os.path.exists(path):
      return []
    with open(path) as f:
      return [int(s) for s in json.load(f)]

  def protect(self, step: int) -> None:
    """Keeps ``step`` forever, whatever the keep window (the last good one before a fault)."""
    if not _is_chief():
      return
    steps = sorted(set(self.protected_steps()) | {step})
    tmp = os.path.join(self.workdir, PROTECTED_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(steps, f)
    os.replace(tmp, os.path.join(self.workdir, PROTECTED_FILE))

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def read_meta(self, step: int) -> dict[str, Any]:
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise CheckpointError(f"{self.step_path(step)}: not a dlrm_jax checkpoint")
    return meta

  def best_step(self) -> int | None:
    """The step with the highest validation AUC (None if none was evaluated)."""
    best, best_auc = None, -np.inf
    for step in self.steps():
      try:
        auc = (self.read_meta(step).get("validation") or {}).get("auc")
      except Exception:  # damaged: restore reports it
        continue
      if auc is not None and auc > best_auc:
        best, best_auc = step, auc
    return best

  def save(self, step: int, tree: dict, meta: dict, *, auc: float | None = None) -> None:
    """Starts an asynchronous save of ``tree`` (from ``make_snapshot``) at ``step``."""
    self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
      metrics={"auc": auc} if auc is not None else None,
      force=True,
    )

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def restore_step(
    self,
    step: int,
    layout: EmbeddingLayout,
    abstract_state: TrainState,
    mesh: Mesh,
    ident: dict,
    *,
    resume: bool,
  ) -> Restored:
    """Restores ``step`` onto ``mesh`` and ``layout``; raises on damage or mismatch."""
    path = self.step_path(step)
    meta = self.read_meta(step)
    check_compatible(meta, ident, path, resume=resume)
    if not meta.get("finite", False):
      raise CheckpointError(f"{path}: marked as holding non-finite values")
    target = saved_abstract(layout, abstract_state, mesh)
    tree = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )["state"]
    if int(tree["step"]) != step:
      raise CheckpointError(f"{path}: holds step {int(tree['step'])}, expected {step}")
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in floats):
      raise CheckpointError(f"{path}: restored values are not finite (damaged)")
    opt_state = flax.serialization.from_state_dict(abstract_state.opt_state, tree["opt_state"])
    tables, slots = table_io.from_logical(
      layout, {"tables": tree["tables"], "slots": tree["slots"]}, abstract_state, mesh
    )
    state = TrainState(
      step=tree["step"], params=tree["params"], opt_state=opt_state, tables=tables, slots=slots
    )
    return Restored(step, state, meta, path)

  def _set_aside(self, step: int, error: Exception) -> None:
    path = self.step_path(step)
    dest = os.path.join(self.workdir, DAMAGED_DIR, str(step))
    self._note(
      f"checkpoint {path} is damaged ({type(error).__name__}: "
      f"{str(error).splitlines()[0] if str(error) else ''}); moved to {dest}"
    )
    if _is_chief() and not self.read_only:
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      if os.path.exists(dest):
        shutil.rmtree(dest)
      os.replace(path, dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("dlrm_jax_checkpoint_set_aside")

  def restore_latest_good(
    self,
    layout: EmbeddingLayout,
    abstract_state: TrainState,
    mesh: Mesh,
    ident: dict,
    *,
    resume: bool = True,
  ) -> Restored | None:
    """The newest checkpoint that restores; damaged ones are reported and moved aside.

    Returns None only when there never was a checkpoint. Raises CheckpointError
    when checkpoints exist but none is usable, so that a run never silently
    starts from scratch.
    """
    damaged = []
    for step in sorted(self.steps(), reverse=True):
      try:
        restored = self.restore_step(step, layout, abstract_state, mesh, ident, resume=resume)
      except CheckpointMismatch:
        raise
      except Exception as e:  # any read or decode failure means damage
        damaged.append(step)
        self._set_aside(step, e)
        continue
      if damaged:
        self._note(f"resuming from the previous good checkpoint {restored.path}")
      self.manager.reload()
      return restored
    self.manager.reload()
    gone = os.path.join(self.workdir, DAMAGED_DIR)
    if damaged or (os.path.isdir(gone) and os.listdir(gone)):
      raise CheckpointError(
        f"no usable checkpoint in {self.directory}: damaged ones are in {gone}. To start "
        f"training from scratch anyway, delete {gone}."
      )
    return None


def resolve_checkpoint(spec: str, workdir: str) -> tuple[str, str]:
  """--checkpoint value -> (workdir holding checkpoints/, 'latest' | 'best' | step).

  Accepts '', 'latest' or 'best' (of --workdir), a workdir, its checkpoints
  directory, or one step directory inside it.
  """
  if spec in ("", "latest", "best"):
    return workdir, spec or "latest"
  path = os.path.abspath(spec.rstrip("/"))
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    return path, "latest"
  if os.path.basename(path) == CHECKPOINT_DIR:
    return os.path.dirname(path), "latest"
  name = os.path.basename(path)
  parent = os.path.dirname(path)
  if name.isdigit() and os.path.basename(parent) == CHECKPOINT_DIR:
    if not os.path.isdir(path):
      raise CheckpointError(f"--checkpoint={spec}: no such checkpoint")
    return os.path.dirname(parent), name
  raise CheckpointError(
    f"--checkpoint={spec}: expected latest, best, a workdir, its "
    f"{CHECKPOINT_DIR}/ directory or {CHECKPOINT_DIR}/STEP"
  )


def load_for_inference(
  spec: str,
  workdir: str,
  layout: EmbeddingLayout,
  abstract_state: TrainState,
  mesh: Mesh,
  ident: dict,
) -> Restored:
  """The state of --checkpoint (latest / best / path), for eval, predict and export."""
  root, which = resolve_checkpoint(spec, workdir)
  store = CheckpointStore(root, read_only=True)
  try:
    if which == "best":
      step = store.best_step()
      if step is None:
        raise CheckpointError(
          f"no checkpoint under {store.directory} has a validation AUC; use --checkpoint=latest"
        )
    elif which == "latest":
      step = store.latest_step()
      if step is None:
        raise CheckpointError(f"no checkpoints under {store.directory}")
    else:
      step = int(which)
    return store.restore_step(step, layout, abstract_state, mesh, ident, resume=False)
  except (CheckpointError, FileNotFoundError):
    raise
  except Exception as e:
    raise CheckpointError(
      f"checkpoint {store.step_path(step)} cannot be read ({type(e).__name__}: {e})"
    ) from e
  finally:
    store.close()
