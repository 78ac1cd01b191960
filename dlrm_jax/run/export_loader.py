"""Scores Criteo examples with a model written by ``--mode=export``; needs only jax and numpy.

Copied into every export directory as ``dlrm_loader.py``:

  import dlrm_loader
  scorer = dlrm_loader.load("runs/x/export")
  probabilities = scorer(dense, sparse)  # f32[N, 13], i32[N, 26] -> f32[N]
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

SIGNATURE = "signature.json"
FUNCTION = "function.jax_exported"
WEIGHTS = "weights.npz"


class Scorer:
  """Click probabilities of preprocessed examples (ids as the training data encodes them)."""

  def __init__(self, exported, weights: list[np.ndarray], signature: dict):
    self.exported = exported
    self.weights = weights
    self.signature = signature
    self.table_sizes = np.asarray(signature["table_sizes"])

  def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    dense = np.asarray(dense, np.float32)
    if self.signature.get("id_mapping") in ("hash", "managed"):
      return self._call_raw(dense, np.asarray(sparse))
    sparse = np.asarray(sparse, np.int32)
    n, t = len(dense), len(self.table_sizes)
    if dense.shape != (n, self.signature["num_dense"]) or sparse.shape != (n, t):
      raise ValueError(
        f"expected dense f32[N, {self.signature['num_dense']}] and sparse "
        f"i32[N, {t}], got {dense.shape} and {sparse.shape}"
      )
    # JAX clamps out-of-range gathers silently; refuse instead.
    bad = (sparse < 0) | (sparse >= self.table_sizes[None, :])
    if bad.any():
      col = int(np.argmax(bad.any(axis=0)))
      raise ValueError(
        f"{self.signature['table_names'][col]}: id out of range [0, {self.table_sizes[col]})"
      )
    return np.asarray(self.exported.call(self.weights, dense, sparse))

  def _call_raw(self, dense: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """--id_mapping=hash or managed: raw 32-bit values (missing = 0); the model maps them
    (hash: value % rows; managed: the trained map, row 0 for a value it does not hold)."""
    if raw.shape != (len(dense), len(self.table_sizes)) or raw.dtype.kind not in "iu":
      t = len(self.table_sizes)
      raise ValueError(f"expected sparse raw values u32[N, {t}], got {raw.shape}")
    if raw.size and (raw.min() < 0 or raw.max() >= 2**32):
      raise ValueError("sparse raw values must be in [0, 2^32)")
    return np.asarray(self.exported.call(self.weights, dense, raw.astype(np.uint32)))


def load(export_dir: str) -> Scorer:
  with open(os.path.join(export_dir, SIGNATURE)) as f:
    signature = json.load(f)
  with open(os.path.join(export_dir, FUNCTION), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  # allow_pickle=False: weights are plain arrays, never Python objects.
  with np.load(os.path.join(export_dir, WEIGHTS), allow_pickle=False) as z:
    weights = [z[f"w{i:05d}"] for i in range(signature["num_weights"])]
  return Scorer(exported, weights, signature)
