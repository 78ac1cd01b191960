"""Orbax checkpoint store: save, keep, verify, restore on any mesh or plan, set damage aside."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as logging_lib
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers as policies

from dlrm_jax.checkpoint import tree as checkpoint_tree
from dlrm_jax.checkpoint.tree import layout_meta as layout_meta
from dlrm_jax.checkpoint.tree import make_snapshot as make_snapshot
from dlrm_jax.config import Config
from dlrm_jax.faults import CheckpointError, CheckpointMismatch
from dlrm_jax.sharding.managed import ManagedLayout
from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.train.state import TrainState

FORMAT = "dlrm_jax/checkpoint/2"  # 2: fused buffers as trained + the layout; 1: logical tables
READABLE_FORMATS = (FORMAT, "dlrm_jax/checkpoint/1")
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
  "dcn_num_layers",
  "dcn_deep_mlp",
  "dcn_low_rank_dim",
  "embedding_mlp",
  "embedding_mlp_shared",
  "optimizer",
  "table_names",
  "table_sizes",
  "id_mapping",
  "managed_capacity",
  "multi_hot_sizes",
  "pooling",
)
# Fields that define the training trajectory: resuming with another value
# would silently give a different model than an uninterrupted run.
TRAINING_FIELDS = (
  "seed",
  "learning_rate",
  "batch_size",
  "adagrad_eps",
  "adagrad_initial_accumulator",
  "adagrad_update",
  "lr_warmup_steps",
  "lr_decay_start_step",
  "lr_decay_steps",
  "lr_decay_power",
  "dataset",
  "synthetic_rows",
  "synthetic_seed",
  "synthetic_tail",
  "max_ind_range",
  "min_frequency",
  "data_sub_sample_rate",
  "vocabulary",
  "shuffle",
  "shuffle_block_rows",
  "shuffle_buffer_blocks",
  "eviction",
  "lfu_decay",
)
# Fields that have no effect unless --dataset=synthetic: never a reason to refuse another dataset.
SYNTHETIC_FIELDS = ("synthetic_rows", "synthetic_seed", "synthetic_tail")
# Fields that have no effect unless --id_mapping=managed (lfu_decay: unless --eviction=lfu).
EVICTION_FIELDS = ("eviction", "lfu_decay")

# Not a flag: the Adagrad formula. Checkpoints from before the reference's
# convention lack the field and were trained with eps inside the root.
ADAGRAD_UPDATE = "g / (sqrt(a) + eps), torch.optim.Adagrad"
ADAGRAD_FIELDS = ("adagrad_eps", "adagrad_initial_accumulator", "adagrad_update")
# Fields added after checkpoints existed: the value an older checkpoint implies.
ADDED_FIELDS = {
  "adagrad_update": "g / sqrt(a + eps), optax (before dlrm-jax followed the reference)",
  "lr_warmup_steps": 0,
  "lr_decay_start_step": 0,
  "lr_decay_steps": 0,
  "lr_decay_power": 2.0,
  "multi_hot_sizes": [],
  "pooling": "sum",
  "data_sub_sample_rate": 0.0,
  "vocabulary": "train",
  # Checkpoints from before --shuffle read every epoch as a permutation of rows.
  "shuffle": "rows",
  "shuffle_block_rows": 1 << 18,
  "shuffle_buffer_blocks": 4,
  "id_mapping": "vocabulary",
  "dcn_num_layers": 0,
  "dcn_deep_mlp": [512, 256],
  "dcn_low_rank_dim": 512,
  "embedding_mlp": [],
  "embedding_mlp_shared": True,
  # Checkpoints from before --id_mapping=managed hold no maps.
  "managed_capacity": [],
  "eviction": "lru",
  "lfu_decay": 0.99,
  "synthetic_tail": 0.0,
}


@dataclasses.dataclass
class Restored:
  step: int
  state: TrainState
  meta: dict[str, Any]
  path: str


BLOCK_FIELDS = ("shuffle_block_rows", "shuffle_buffer_blocks")


def identity(
  config: Config, table_names: Sequence[str], table_sizes: Sequence[int], order: str = "rows"
) -> dict:
  """The fields compared on restore, as JSON values; ``order``: the training order it resolved."""
  values = dataclasses.asdict(config)
  out = {k: values[k] for k in MODEL_FIELDS + TRAINING_FIELDS if k in values}
  out.update(_order_identity(order, config))
  out.update(table_names=list(table_names), table_sizes=[int(s) for s in table_sizes])
  out["adagrad_update"] = ADAGRAD_UPDATE
  return json.loads(json.dumps(out))  # tuples -> lists, as they come back from JSON


def _order_identity(order: str, config: Config) -> dict:
  """The training order as it resolved (--shuffle=auto depends on the split's size).

  A resume compares what the loader does, not the flag: auto resolving to another order
  must be refused, and the block flags change nothing while rows are read.
  """
  if order == "rows":
    return {"shuffle": "rows", **{k: ADDED_FIELDS[k] for k in BLOCK_FIELDS}}
  return {"shuffle": order, **{k: getattr(config, k) for k in BLOCK_FIELDS}}


def check_compatible(meta: dict, ident: dict, path: str, *, resume: bool) -> None:
  """Raises CheckpointMismatch listing every differing field (model fields always)."""
  saved = meta.get("identity", {})
  fields = MODEL_FIELDS + (TRAINING_FIELDS if resume else ())
  if ident.get("optimizer") == "sgd" == saved.get("optimizer"):
    fields = tuple(f for f in fields if f not in ADAGRAD_FIELDS)  # SGD never reads them
  if ident.get("dataset") != "synthetic":
    fields = tuple(f for f in fields if f not in SYNTHETIC_FIELDS)
  if ident.get("id_mapping") != "managed":
    fields = tuple(f for f in fields if f not in EVICTION_FIELDS)
  elif ident.get("eviction") != "lfu" and saved.get("eviction", ADDED_FIELDS["eviction"]) != "lfu":
    fields = tuple(f for f in fields if f != "lfu_decay")  # LRU never reads it
  diff = [
    f"{f}: checkpoint {saved.get(f, ADDED_FIELDS.get(f))!r}, now {ident.get(f)!r}"
    for f in fields
    if saved.get(f, ADDED_FIELDS.get(f)) != ident.get(f)
  ]
  if any(d.startswith(("adagrad_eps", "adagrad_update")) for d in diff):
    diff.append(
      "(Adagrad now follows the reference: eps is added after the square root and "
      "--adagrad_eps defaults to 1e-10, where checkpoints before that change used "
      "sqrt(a + eps) with eps 1e-7; such a checkpoint cannot continue the same run.)"
    )
  if diff:
    what = "resume training from" if resume else "load"
    raise CheckpointMismatch(
      f"refusing to {what} {path}: it was saved with a different configuration.\n  "
      + "\n  ".join(diff)
      + "\nUse the flags it was saved with, or a new --workdir."
    )


def _check_managed(meta: dict, abstract_state: TrainState, path: str) -> None:
  """Raises CheckpointMismatch unless the checkpoint holds maps exactly when the state does."""
  saved = (meta.get("layout") or {}).get("managed", [])
  if saved != sorted(abstract_state.managed):
    has = lambda keys: "managed tables (--id_mapping=managed)" if keys else "no managed tables"  # noqa: E731
    raise CheckpointMismatch(
      f"refusing to load {path}: it holds {has(saved)}, this run has "
      f"{has(abstract_state.managed)}. Use the flags it was saved with, or a new --workdir."
    )


class _DropReadOnlyNotice(logging_lib.Filter):
  """Drops Orbax's "Given directory is read only" warning; eval, predict and export ask for it."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _quiet_read_only_notice(read_only: bool):
  """While a read-only manager is built; every other warning still reaches the user."""
  notice = _DropReadOnlyNotice()
  absl_logger = logging_lib.getLogger("absl")  # Orbax logs through absl's Python logger
  if read_only:
    absl_logger.addFilter(notice)
  try:
    yield
  finally:
    absl_logger.removeFilter(notice)


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
      # 0 when read-only: Orbax would otherwise warn that it sets it to 0 itself.
      save_interval_steps=0 if read_only else 1,
      enable_async_checkpointing=True,
      read_only=read_only,
      create=not read_only,
      cleanup_tmp_directories=not read_only,
    )
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f"no checkpoints at {self.directory}")
    with _quiet_read_only_notice(read_only):
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
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith(FORMAT[:-1]):
      raise CheckpointError(f"{self.step_path(step)}: not a dlrm_jax checkpoint")
    if meta["format"] not in READABLE_FORMATS:
      raise CheckpointMismatch(
        f"{self.step_path(step)} was written in checkpoint format {meta['format']}; this "
        f"version reads {', '.join(READABLE_FORMATS)}. Restore it with the dlrm_jax that "
        f"wrote it, or use a new --workdir."
      )
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
    ident: dict | None,
    *,
    resume: bool,
    managed: ManagedLayout | None = None,
  ) -> Restored:
    """Restores ``step`` onto ``mesh`` and ``layout``; raises on damage or mismatch.

    ``ident`` None (a library user's state, no Config): the layout's shapes are the only check.
    ``managed``: the run's ManagedLayout under --id_mapping=managed (``tree.to_state``).
    """
    path = self.step_path(step)
    meta = self.read_meta(step)
    if ident is not None:
      check_compatible(meta, ident, path, resume=resume)
    _check_managed(meta, abstract_state, path)
    if not meta.get("finite", False):
      raise CheckpointError(f"{path}: marked as holding non-finite values")
    target, saved = checkpoint_tree.restore_target(meta, layout, abstract_state, mesh)
    tree = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )["state"]
    if int(tree["step"]) != step:
      raise CheckpointError(f"{path}: holds step {int(tree['step'])}, expected {step}")
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in floats):
      raise CheckpointError(f"{path}: restored values are not finite (damaged)")
    state = checkpoint_tree.to_state(tree, saved, layout, abstract_state, mesh, managed)
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
    managed: ManagedLayout | None = None,
  ) -> Restored | None:
    """The newest checkpoint that restores; damaged ones are reported and moved aside.

    Returns None only when there never was a checkpoint. Raises CheckpointError
    when checkpoints exist but none is usable, so that a run never silently
    starts from scratch.
    """
    damaged = []
    for step in sorted(self.steps(), reverse=True):
      try:
        restored = self.restore_step(
          step, layout, abstract_state, mesh, ident, resume=resume, managed=managed
        )
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
  managed: ManagedLayout | None = None,
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
    return store.restore_step(
      step, layout, abstract_state, mesh, ident, resume=False, managed=managed
    )
  except (CheckpointError, FileNotFoundError):
    raise
  except Exception as e:
    raise CheckpointError(
      f"checkpoint {store.step_path(step)} cannot be read ({type(e).__name__}: {e})"
    ) from e
  finally:
    store.close()
