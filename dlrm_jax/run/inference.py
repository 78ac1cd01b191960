"""--mode=eval and --mode=predict: score a split (or a raw unlabeled file) with a saved model."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from absl import logging

from dlrm_jax.checkpoint import manager as checkpointing
from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data.preprocess import encode_unlabeled
from dlrm_jax.data.store import SplitArrays, open_split
from dlrm_jax.train.components import Components, abstract_train_state, load_components
from dlrm_jax.train.evaluation import evaluate, predict_logits
from dlrm_jax.train.state import TrainState
from dlrm_jax.train.step import make_eval_step


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
    config.checkpoint,
    config.workdir,
    c.layout,
    abstract,
    c.mesh,
    checkpointing.identity(config, meta["sparse_names"], c.table_sizes),
    c.managed,
  )
  logging.info("loaded %s (step %d)", restored.path, restored.step)
  return Loaded(
    c,
    processed,
    meta,
    restored.state,
    restored.path,
    make_eval_step(c.model, c.layout, c.mesh, abstract, c.managed),
  )


def run_eval(config: Config) -> dict[str, Any]:
  """Exact metrics of --split for --checkpoint."""
  m = load(config)
  result = evaluate(m.components, m.state, m.eval_step, m.processed_dir, config.split)
  return {"split": config.split, "checkpoint": m.checkpoint, **result}


def encode_unlabeled_raw(path: str, processed_dir: str) -> SplitArrays:
  """A raw unlabeled Criteo file encoded with the training vocabulary (labels 0)."""
  try:
    return encode_unlabeled(path, processed_dir)
  except ValueError as e:  # bad rows, an empty or a labelled file: a message, not a traceback
    raise ConfigError(f"--predict_file: {e}") from None


def score(m: Loaded, arrays: SplitArrays) -> np.ndarray:
  """Click probabilities f32[N] of every row of ``arrays``, in order."""
  logits, _ = predict_logits(m.components, m.state, m.eval_step, arrays)
  return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def write_csv(path: str, ids: np.ndarray, probabilities: np.ndarray) -> None:
  """Kaggle's submission format: ``Id,Predicted``, one row per example."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("Id,Predicted\n")
    np.savetxt(
      f,
      np.stack([ids.astype(np.float64), probabilities], axis=1),
      fmt=["%d", "%.6f"],
      delimiter=",",
    )
  os.replace(tmp, path)


def run_predict(config: Config) -> dict[str, Any]:
  """Scores --predict_file (Ids from --first_test_id) or --split (Ids = row numbers) to a CSV."""
  m = load(config)
  if config.predict_file:
    arrays = encode_unlabeled_raw(config.predict_file, m.processed_dir)
    first_id, default_name = config.first_test_id, "submission.csv"
  else:
    arrays = open_split(m.processed_dir, config.split)
    first_id, default_name = 0, f"predictions_{config.split}.csv"
  probabilities = score(m, arrays)
  path = config.predictions_file or os.path.join(config.workdir, default_name)
  if jax.process_index() == 0:
    write_csv(path, first_id + np.arange(len(probabilities), dtype=np.int64), probabilities)
  return {"predictions": path, "rows": int(len(probabilities)), "checkpoint": m.checkpoint}
