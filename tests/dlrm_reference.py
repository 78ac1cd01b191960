"""Independent NumPy references for end-to-end tests: a checkpoint's weights, DLRM's forward
pass and metrics, written from the paper's formulas and the documented on-disk layout.

Nothing here imports dlrm_jax: a checkpoint is read with plain Orbax and its
JSON metadata, each table is cut out of the fused buffers by the placement
arithmetic documented in planner.TablePlacement, and the model is the
reference's (ReLU MLPs, dot interaction over the strictly lower triangle).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def read_checkpoint(step_dir) -> tuple[dict, dict[str, np.ndarray]]:
  """(Flax params as nested NumPy dicts, {table name: f64[rows, dim]}) of one checkpoint."""
  with open(os.path.join(step_dir, "meta", "metadata")) as f:
    meta = json.load(f)
  path = os.path.join(step_dir, "state")
  # Every array as NumPy, whatever devices or processes wrote it.
  with ocp.PyTreeCheckpointer() as ckptr:
    shapes = ckptr.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), shapes)
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  layout = meta["layout"]["layout"]
  r = layout["rows_per_shard"]
  tables = {}
  for p in layout["placements"]:
    rows, plan, off = p["spec"]["rows"], p["plan"], p["offset"]
    ids = np.arange(rows)
    if plan == "table":
      where = p["owner"] * r + off + ids
    elif plan == "row":
      where = (ids // p["chunk"]) * r + off + ids % p["chunk"]
    else:
      where = off + ids
    buffer = {"table": "sharded", "row": "sharded"}.get(plan, plan)
    tables[p["spec"]["name"]] = np.asarray(tree["buffers"][buffer], np.float64)[where]
  return tree["params"], tables


def _mlp(layers: dict, x: np.ndarray, relu_last: bool) -> np.ndarray:
  n = len(layers)
  for i in range(n):
    layer = layers[f"dense_{i}"]
    x = x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < n - 1 or relu_last:
      x = np.maximum(x, 0.0)
  return x


def forward(params: dict, tables: list[np.ndarray], dense, sparse) -> np.ndarray:
  """Logits f64[N] of DLRM with the dot interaction (diagonal excluded), in float64."""
  bottom = _mlp(params["bottom_mlp"], np.asarray(dense, np.float64), relu_last=True)
  emb = [t[sparse[:, k]] for k, t in enumerate(tables)]
  features = [bottom] + emb
  pairs = [
    np.sum(features[i] * features[j], axis=1)
    for i in range(len(features))
    for j in range(i)  # strictly lower triangle, row by row (the reference's li, lj)
  ]
  z = np.concatenate([bottom, np.stack(pairs, axis=1)], axis=1)
  return _mlp(params["top_mlp"], z, relu_last=False)[:, 0]


def pairwise_auc(labels, scores) -> float:
  """AUC by counting every (positive, negative) pair: wins + ties / 2, over all pairs."""
  labels = np.asarray(labels) > 0.5
  pos, neg = np.asarray(scores)[labels], np.asarray(scores)[~labels]
  wins = ties = 0
  for s in pos:  # one positive at a time keeps memory at O(N)
    wins += int(np.sum(s > neg))
    ties += int(np.sum(s == neg))
  return (wins + 0.5 * ties) / (len(pos) * len(neg))


def logloss(labels, logits) -> float:
  p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
  y = np.asarray(labels, np.float64)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
