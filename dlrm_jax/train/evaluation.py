"""Scoring a whole split on the mesh: logits in order, and its exact metrics."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.data.store import SplitArrays, open_split
from dlrm_jax.train import metrics as metrics_lib
from dlrm_jax.train.components import Components
from dlrm_jax.train.state import TrainState
from dlrm_jax.train.step import to_global


def _local_rows(out: jax.Array) -> list[jax.Array]:
  """This process's shards of a batch-sharded f32[B], in global order, copying to the host."""
  shards = [s.data for s in sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)]
  for shard in shards:
    shard.copy_to_host_async()
  return shards


def predict_logits(
  c: Components, state: TrainState, eval_step: Callable, arrays: SplitArrays
) -> tuple[np.ndarray, np.ndarray]:
  """(logits f32[N], labels f32[N]) of every row of ``arrays``, in order, on every process.

  Nothing waits for the device per batch: each process keeps its rows' logits
  on its devices (copied to the host asynchronously), takes labels and padding
  from its host batches, and the processes exchange their parts once.
  """
  loader = BatchLoader(
    arrays,
    c.config.eval_batch_size,
    shuffle=False,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  logits, labels, masks = [], [], []
  for batch in loader.iterate():
    batch["sparse"] = c.check_ids(batch["sparse"])
    logits.append(_local_rows(eval_step(state, to_global(batch, c.mesh))))
    labels.append(batch["label"])
    masks.append(batch["mask"])
  # [batches, local batch] per process; global batch i is process 0's part,
  # then process 1's, ... (BatchLoader), so [process, batch, row] -> [batch, process, row].
  local_logits = np.stack([np.concatenate([np.asarray(x) for x in shards]) for shards in logits])
  parts = local_logits, np.stack(labels), np.stack(masks)
  if jax.process_count() > 1:
    parts = tuple(
      np.asarray(multihost_utils.process_allgather(p, tiled=False)).swapaxes(0, 1) for p in parts
    )
  logits_all, labels_all, mask_all = (p.reshape(-1) for p in parts)
  keep = mask_all > 0  # the last batch's padding
  return logits_all[keep], labels_all[keep]


def evaluate(
  c: Components, state: TrainState, eval_step: Callable, processed_dir: str, split: str
) -> dict[str, float]:
  """Exact metrics over every example of ``split``."""
  logits, labels = predict_logits(c, state, eval_step, open_split(processed_dir, split))
  return metrics_lib.evaluate_predictions(labels, logits)
