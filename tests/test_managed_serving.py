"""--id_mapping=managed served: evaluation's sharded map lookup, the exported function and a
NumPy reference agree on every id (unknown ids: row 0), on one device and on eight."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re

import criteo_reference as ref
import dlrm_reference
import jax
import numpy as np
import pytest
from main_runner import run_main

from dlrm_jax.checkpoint import table_io
from dlrm_jax.config import Config
from dlrm_jax.run import managed_serving
from dlrm_jax.run.export import serving_function
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.train.components import abstract_train_state, build_components, initial_state
from dlrm_jax.train.step import batch_shardings, make_eval_step, make_train_step

CONFIG = Config(
  embedding_dim=8,
  bottom_mlp=(16, 8),
  top_mlp=(16, 1),
  batch_size=32,
  eval_batch_size=32,
  learning_rate=0.5,
  id_mapping="managed",
  max_steps=6,
)
NAMES = ["C1", "C2", "C3"]
SIZES = [41, 9, 17]  # capacity + 1 (the unknown row): 40, 8 and 16 ids
# Raw ids: edge values of uint32 and values equal mod small numbers; more than capacity, so
# the small tables evict.
POOL = np.array(
  [0, 1, 7, 8, 9, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 41, 82, 123]
  + [int(x) for x in np.random.default_rng(0).integers(0, 2**32, 40, dtype=np.uint64)],
  np.uint32,
)
UNSEEN = np.array([2, 3, 0xFFFFFFFE, 12345678], np.uint32)  # never in a training batch


def raw_batch(seed: int, pool: np.ndarray) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "dense": rng.random((32, 13), np.float32),
    "sparse": rng.choice(pool, size=(32, len(NAMES))),
    "label": rng.integers(0, 2, 32).astype(np.float32),
    "mask": np.ones(32, np.float32),
  }


def reference_rows(c, state) -> list[dict[int, int]]:
  """Per table, raw id -> logical row from the maps' row arrays, by the layout's definition:
  shard k holds rows [k * chunk, (k + 1) * chunk) of each row-wise table; a row holds an id
  when its map slot is set."""
  ml = c.managed
  m = ml.model_size
  row_id = np.asarray(jax.device_get(state.managed["row_id"])).reshape(m, -1)
  slot = np.asarray(jax.device_get(state.managed["row_slot"])).reshape(m, -1)
  out = []
  for p in c.layout.placements:
    held = {}
    for k in range(m):
      for r in range(p.chunk):
        row = k * p.chunk + r
        if row < p.spec.rows and slot[k, p.offset + r] >= 0:
          assert int(row_id[k, p.offset + r]) not in held
          held[int(row_id[k, p.offset + r])] = row
    assert 0 not in held.values()  # the unknown row is never an id's
    out.append(held)
  return out


@pytest.mark.parametrize("devices", [1, 8])
def test_eval_export_and_reference_agree_on_known_and_unknown_ids(devices):
  mesh = mesh_lib.make_mesh((devices,), jax.devices()[:devices])
  c = build_components(dataclasses.replace(CONFIG, sharding="row"), mesh, SIZES, NAMES)
  assert c.managed is not None
  state = initial_state(c)
  abstract = abstract_train_state(c)
  train = make_train_step(
    c.model, c.layout, c.sparse_opt, c.dense_tx, mesh, abstract, managed=c.managed
  )
  evaluate = make_eval_step(c.model, c.layout, mesh, abstract, c.managed)

  def put(batch):
    return jax.device_put({**batch, "sparse": c.check_ids(batch["sparse"])}, batch_shardings(mesh))

  for step in range(6):
    state, _ = train(state, put(raw_batch(step, POOL)))
  held = reference_rows(c, state)
  # The pool has more ids than capacity: one device fills every table; on eight, ids go to
  # their owner shard by hash, so a shard may meet fewer ids than it has rows.
  counts = [len(h) for h in held]
  if devices == 1:
    assert counts == [40, 8, 16]
  assert all(0 < n <= cap for n, cap in zip(counts, [40, 8, 16], strict=True)), counts
  batch = raw_batch(99, np.concatenate([POOL, UNSEEN]))
  batch["sparse"][:4] = UNSEEN[:, None]  # every table sees unknown ids
  raw = batch["sparse"]
  logits = np.asarray(evaluate(state, put(batch)))

  # NumPy reference: the id's row, or row 0 for an id the maps do not hold.
  rows = np.array([[held[t].get(int(x), 0) for t, x in enumerate(r)] for r in raw])
  assert (rows[:4] == 0).all() and (rows[4:] > 0).any()
  tables = [table_io.logical_table(c.layout, state.tables, t) for t in range(len(NAMES))]
  params = jax.tree.map(np.asarray, jax.device_get(state.params))
  expected = dlrm_reference.forward(params, tables, batch["dense"], rows)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)

  # The exported function's lookup: one device, no shard_map, the same rows.
  leaves, treedef = jax.tree.flatten(state.params)
  maps = managed_serving.resident_ids(c.managed, state.managed)
  for t, (ids, r) in enumerate(maps):
    assert dict(zip(ids.tolist(), r.tolist(), strict=True)) == held[t]
  weights = leaves + tables + [i for i, _ in maps] + [r for _, r in maps]
  f = jax.jit(serving_function(c.model, treedef, len(leaves), managed=True))
  served = np.asarray(f(weights, batch["dense"], raw))
  np.testing.assert_allclose(served, 1 / (1 + np.exp(-expected)), rtol=1e-5, atol=1e-6)


def test_find_rows_unknown_and_empty_map():
  ids = np.array([0, 5, 0xFFFFFFFF], np.uint32)
  rows = np.array([3, 1, 2], np.int32)
  x = np.array([5, 6, 0xFFFFFFFF, 0, 4, 0xFFFFFFFE], np.uint32)
  got = np.asarray(managed_serving.find_rows(ids, rows, x))
  np.testing.assert_array_equal(got, [1, 0, 2, 3, 0, 0])
  empty = np.asarray(managed_serving.find_rows(np.zeros(1, np.uint32), np.zeros(1, np.int32), x))
  np.testing.assert_array_equal(empty, 0)


def test_tiny_run_eval_predict_and_export_follow_one_rule(tmp_path):
  """Train with a small capacity, then --mode=eval, --mode=predict and the exported model
  score the same rows alike; ids the maps do not hold (never seen, or evicted) take row 0."""
  work, data = tmp_path / "work", tmp_path / "data"
  args = ("--id_mapping=managed", "--managed_capacity=300,C1:40", "--max_steps=20")
  proc = run_main(work, data, *args, "--eval_every_steps=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
  final = next(r for r in records if r.get("split") == "test")
  proc = run_main(work, data, *args, "--mode=eval", "--split=test")
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = re.search(r"test AUC (\S+)  log loss (\S+)", proc.stdout)
  assert got and abs(float(got[1]) - final["auc"]) <= 6e-5, (proc.stdout, final)
  # Rows to score: training rows (ids held, or evicted since) and, at the end, rows whose every
  # categorical is a value no split has: those score as the model with row 0 in every table.
  lines = ref.physical_lines(next(data.glob("synthetic_*/train.txt")).read_bytes())[:300]
  fields = [ref.good_fields(line) for line in lines]
  seen = {v for f in fields for v in f[14:40]}
  unseen = [b"%08x" % (0xFEDC0000 + t) for t in range(26)]
  assert not seen & set(unseen)
  fields += [f[:14] + unseen for f in fields[:5]]
  test_file = tmp_path / "test.txt"
  test_file.write_bytes(b"".join(b"\t".join(f[1:]) + b"\n" for f in fields))
  out = tmp_path / "sub.csv"
  proc = run_main(
    work, data, *args, "--mode=predict", f"--predict_file={test_file}", f"--predictions_file={out}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  predicted = np.loadtxt(out.read_text().splitlines()[1:], delimiter=",")[:, 1]
  params, tables = dlrm_reference.read_checkpoint(work / "checkpoints" / "20")
  dense = np.array([ref.dense_of(f[1:14]) for f in fields], np.float32)
  unknown = dlrm_reference.forward(
    params, [tables[f"C{t}"] for t in range(1, 27)], dense[-5:], np.zeros((5, 26), int)
  )
  np.testing.assert_allclose(predicted[-5:], 1 / (1 + np.exp(-unknown)), atol=1e-6)
  # The exported model takes the raw values and maps them itself, the same way.
  proc = run_main(work, data, *args, "--mode=export", f"--export_dir={tmp_path / 'export'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  spec = importlib.util.spec_from_file_location("exported", tmp_path / "export" / "dlrm_loader.py")
  loader = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loader)
  raw = np.array([[int(v, 16) if v else 0 for v in f[14:40]] for f in fields], np.uint32)
  exported = loader.load(str(tmp_path / "export"))(dense, raw)
  np.testing.assert_allclose(exported, predicted, atol=1e-6)  # the CSV has 6 decimals
  assert len(np.unique(np.round(predicted[:-5], 6))) > 10  # not one unknown row for all
