"""Resume identity: schedule fields and the Adagrad formula; fields older checkpoints lack."""

import pytest

from dlrm_jax.checkpoint import manager as checkpointing
from dlrm_jax.config import Config
from dlrm_jax.faults import CheckpointMismatch

NAMES, SIZES = ["C1", "C2"], [10, 20]


def _ident(**changes):
  return checkpointing.identity(Config(**changes), NAMES, SIZES)


def _older(ident, **saved):
  """The identity a checkpoint written before the schedule and the Adagrad fix would hold."""
  old = {k: v for k, v in ident.items() if k not in checkpointing.ADDED_FIELDS}
  return {"identity": {**old, "adagrad_eps": 1e-7, **saved}}


def test_older_sgd_checkpoint_resumes():
  ident = _ident(optimizer="sgd")
  checkpointing.check_compatible(_older(ident), ident, "ckpt", resume=True)


def test_older_adagrad_checkpoint_is_refused_with_the_reason():
  ident = _ident(optimizer="adagrad")
  with pytest.raises(CheckpointMismatch, match="after the square root"):
    checkpointing.check_compatible(_older(ident), ident, "ckpt", resume=True)
  # Even with the old eps: the formula differs.
  ident = _ident(optimizer="adagrad", adagrad_eps=1e-7)
  with pytest.raises(CheckpointMismatch, match="adagrad_update"):
    checkpointing.check_compatible(_older(ident), ident, "ckpt", resume=True)


def test_schedule_change_is_refused_on_resume_only():
  saved = {"identity": _ident(lr_warmup_steps=5, lr_decay_start_step=5)}
  ident = _ident()
  with pytest.raises(CheckpointMismatch, match="lr_warmup_steps"):
    checkpointing.check_compatible(saved, ident, "ckpt", resume=True)
  checkpointing.check_compatible(saved, ident, "ckpt", resume=False)  # eval, export: fine


def test_the_resolved_training_order_is_compared_not_the_flag():
  # --shuffle=auto reads rows from RAM and blocks from a memory-mapped split: a resume
  # whose split resolves to another order than the checkpoint's is refused, naming --shuffle.
  saved = {"identity": checkpointing.identity(Config(), NAMES, SIZES, order="rows")}
  blocks = checkpointing.identity(Config(), NAMES, SIZES, order="blocks")
  with pytest.raises(CheckpointMismatch, match="shuffle: checkpoint 'rows', now 'blocks'"):
    checkpointing.check_compatible(saved, blocks, "ckpt", resume=True)
  # Block sizes change nothing while rows are read ...
  rows = checkpointing.identity(Config(shuffle_block_rows=1024), NAMES, SIZES, order="rows")
  checkpointing.check_compatible(saved, rows, "ckpt", resume=True)
  # ... but do while blocks are read.
  saved = {"identity": blocks}
  other = checkpointing.identity(Config(shuffle_block_rows=1024), NAMES, SIZES, order="blocks")
  with pytest.raises(CheckpointMismatch, match="shuffle_block_rows"):
    checkpointing.check_compatible(saved, other, "ckpt", resume=True)


def test_checkpoints_from_before_the_block_shuffle_read_rows():
  ident = checkpointing.identity(Config(), NAMES, SIZES, order="blocks")
  with pytest.raises(CheckpointMismatch, match="shuffle: checkpoint 'rows'"):
    checkpointing.check_compatible(_older(ident), ident, "ckpt", resume=True)


def test_managed_fields_eviction_on_resume_only_capacity_always():
  managed = dict(id_mapping="managed", managed_capacity=(("", 100),))
  saved = {"identity": _ident(**managed)}
  with pytest.raises(CheckpointMismatch, match="eviction: checkpoint 'lru', now 'lfu'"):
    checkpointing.check_compatible(saved, _ident(**managed, eviction="lfu"), "ckpt", resume=True)
  checkpointing.check_compatible(saved, _ident(**managed, eviction="lfu"), "ckpt", resume=False)
  # The capacity defines the tables: refused for eval too (table_sizes aside).
  other = _ident(id_mapping="managed", managed_capacity=(("", 100), ("C2", 7)))
  with pytest.raises(CheckpointMismatch, match="managed_capacity: checkpoint"):
    checkpointing.check_compatible(saved, other, "ckpt", resume=False)
  # --lfu_decay counts only under lfu, --eviction only under managed.
  checkpointing.check_compatible(saved, _ident(**managed, lfu_decay=0.5), "ckpt", resume=True)
  lfu = {"identity": _ident(**managed, eviction="lfu")}
  with pytest.raises(CheckpointMismatch, match="lfu_decay: checkpoint 0.99, now 0.5"):
    checkpointing.check_compatible(
      lfu, _ident(**managed, eviction="lfu", lfu_decay=0.5), "ckpt", resume=True
    )
  hashed = {"identity": _ident(id_mapping="hash")}
  other = _ident(id_mapping="hash", eviction="lfu")
  checkpointing.check_compatible(hashed, other, "ckpt", resume=True)


def test_checkpoints_from_before_managed_tables_still_resume():
  ident = _ident(optimizer="sgd", id_mapping="hash")
  saved = {k: v for k, v in ident.items() if k not in ("managed_capacity", "eviction", "lfu_decay")}
  checkpointing.check_compatible({"identity": saved}, ident, "ckpt", resume=True)
