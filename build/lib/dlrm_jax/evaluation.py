"""Scoring a whole split on the mesh: logits in order, and its exact metrics."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from dlrm_jax import metrics as metrics_lib
from dlrm_jax.components import Components, to_global
from dlrm_jax.data.loader import BatchLoader, check_batch_ids
from dlrm_jax.data.store import SplitArrays, open_split
from dlrm_jax.train_state import TrainState


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
