"""Checkpoint round trips: 8 devices table-wise -> 1 device, 4 row-wise, 8 column-wise."""

import dataclasses

import flax.serialization
import jax
import numpy as np
import pytest

from dlrm_jax.checkpoint import manager as checkpointing
from dlrm_jax.checkpoint import table_io
from dlrm_jax.config import Config
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.train.components import abstract_train_state, build_components
from dlrm_jax.train.state import create_train_state
from dlrm_jax.train.step import make_eval_step, make_train_step, to_global

SIZES = (40, 7, 100, 33, 16)  # uneven sizes: padding, row chunks, replicated logical specs
NAMES = tuple(f"C{i + 1}" for i in range(len(SIZES)))
CONFIG = Config(
  embedding_dim=8,
  bottom_mlp=(16, 8),
  top_mlp=(16, 1),
  batch_size=32,
  eval_batch_size=32,
  learning_rate=0.5,
  max_steps=3,
)


def components(n, plan, optimizer):
  config = dataclasses.replace(CONFIG, sharding=plan, optimizer=optimizer)
  mesh = mesh_lib.make_mesh((n,), devices=jax.devices()[:n])
  return build_components(config, mesh, SIZES, NAMES)


def batch(seed):
  rng = np.random.default_rng(seed)
  return {
    "dense": rng.random((32, 13), np.float32),
    "sparse": np.stack([rng.integers(0, s, 32) for s in SIZES], 1).astype(np.int32),
    "label": rng.integers(0, 2, 32).astype(np.float32),
    "mask": np.ones(32, np.float32),
  }


def logical_arrays(c, state):
  abstract = jax.eval_shape(lambda s: s, state)
  _, finite = checkpointing.make_snapshot(c.layout, abstract, c.mesh, 0)(state)
  assert bool(finite)
  out = {
    f"{kind}/{p.spec.name}": table_io.logical_table(c.layout, buffers, i)
    for i, p in enumerate(c.layout.placements)
    for kind, buffers in [("table", state.tables)]
    + [(k, {n: s[k] for n, s in state.slots.items()}) for k in next(iter(state.slots.values()))]
  }
  flat, _ = jax.tree_util.tree_flatten_with_path((state.params, state.opt_state, state.step))
  out.update({jax.tree_util.keystr(k): np.asarray(jax.device_get(v)) for k, v in flat})
  return out


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_restore_onto_other_mesh_and_plan(tmp_path, optimizer):
  src = components(8, "table", optimizer)
  abstract = abstract_train_state(src)
  state = create_train_state(
    src.model, src.layout, src.sparse_opt, src.dense_tx, src.mesh, jax.random.key(0)
  )
  step = make_train_step(src.model, src.layout, src.sparse_opt, src.dense_tx, src.mesh, abstract)
  for i in range(3):
    state, _ = step(state, to_global(batch(i), src.mesh))
  probe = batch(99)
  expected = np.asarray(
    make_eval_step(src.model, src.layout, src.mesh, abstract)(state, to_global(probe, src.mesh))
  )
  saved = logical_arrays(src, state)
  ident = checkpointing.identity(src.config, NAMES, SIZES)
  store = checkpointing.CheckpointStore(str(tmp_path), keep=2)
  tree, _ = checkpointing.make_snapshot(src.layout, abstract, src.mesh, 0)(state)
  store.save(
    3,
    tree,
    {
      "format": checkpointing.FORMAT,
      "step": 3,
      "identity": ident,
      "finite": True,
      "layout": checkpointing.layout_meta(src.layout, abstract),
    },
  )
  store.wait()
  store.close()

  for n, plan in ((1, "table"), (4, "row"), (8, "column")):
    dst = components(n, plan, optimizer)
    assert {p.plan for p in dst.layout.placements} == {plan}
    target = abstract_train_state(dst)
    store = checkpointing.CheckpointStore(str(tmp_path), read_only=True)
    restored = store.restore_step(3, dst.layout, target, dst.mesh, ident, resume=True)
    store.close()
    # Loading used the target's shardings.
    shardings = jax.tree.leaves(jax.tree.map(lambda a: a.sharding, restored.state))
    assert {s.mesh.devices.size for s in shardings} == {n}
    got = logical_arrays(dst, restored.state)
    assert got.keys() == saved.keys()
    for k in saved:
      assert got[k].tobytes() == saved[k].tobytes(), f"{n} devices, {plan}: {k} differs"
    out = np.asarray(
      make_eval_step(dst.model, dst.layout, dst.mesh, target)(
        restored.state, to_global(probe, dst.mesh)
      )
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_logical_spec_spreads_tables_over_model_axis():
  assert table_io.logical_spec((40, 8), 8) == jax.sharding.PartitionSpec("model", None)
  assert table_io.logical_spec((7, 8), 4) == jax.sharding.PartitionSpec(None, "model")
  assert table_io.logical_spec((7, 6), 4) == jax.sharding.PartitionSpec()


def test_format_1_checkpoint_of_logical_tables_still_restores_and_unknown_is_refused(tmp_path):
  src = components(8, "table", "adagrad")
  abstract = abstract_train_state(src)
  state = create_train_state(
    src.model, src.layout, src.sparse_opt, src.dense_tx, src.mesh, jax.random.key(0)
  )
  state, _ = make_train_step(
    src.model, src.layout, src.sparse_opt, src.dense_tx, src.mesh, abstract
  )(state, to_global(batch(0), src.mesh))
  # What format 1 saved: every table and slot cut out as its own array.
  old = jax.jit(
    lambda s: {
      "step": s.step,
      "rng": jax.random.key_data(jax.random.key(0)),
      "params": s.params,
      "opt_state": flax.serialization.to_state_dict(s.opt_state),
      **table_io.extract_all(src.layout, s.tables, s.slots),
    }
  )(state)
  ident = checkpointing.identity(src.config, NAMES, SIZES)
  store = checkpointing.CheckpointStore(str(tmp_path))
  meta = {"format": "dlrm_jax/checkpoint/1", "step": 1, "identity": ident, "finite": True}
  store.save(1, old, meta)
  store.save(2, old, {**meta, "format": "dlrm_jax/checkpoint/9", "step": 2})
  store.wait()
  store.close()
  dst = components(4, "row", "adagrad")
  store = checkpointing.CheckpointStore(str(tmp_path))
  with pytest.raises(checkpointing.CheckpointMismatch, match="format dlrm_jax/checkpoint/9"):
    store.restore_latest_good(dst.layout, abstract_train_state(dst), dst.mesh, ident)
  assert (tmp_path / "checkpoints" / "2").is_dir()  # kept for the version that reads it
  restored = store.restore_step(
    1, dst.layout, abstract_train_state(dst), dst.mesh, ident, resume=True
  )
  store.close()
  want, got = logical_arrays(src, state), logical_arrays(dst, restored.state)
  assert want.keys() == got.keys()
  for k in want:
    assert got[k].tobytes() == want[k].tobytes(), k


@pytest.mark.parametrize("plan", ["table", "row"])
def test_save_takes_the_state_buffers_as_they_lie(plan):
  """No second device copy and no resharding: the saved tree holds the state's own buffers."""
  c = components(8, plan, "adagrad")
  abstract = abstract_train_state(c)
  state = create_train_state(c.model, c.layout, c.sparse_opt, c.dense_tx, c.mesh, jax.random.key(0))
  tree, finite = checkpointing.make_snapshot(c.layout, abstract, c.mesh, 0)(state)
  assert bool(finite)

  def pointers(x):
    return [(s.device.id, s.data.unsafe_buffer_pointer()) for s in x.addressable_shards]

  for name, buf in state.tables.items():
    assert pointers(tree["buffers"][name]) == pointers(buf)
    for k, slot in state.slots[name].items():
      assert pointers(tree["slots"][name][k]) == pointers(slot)
  tables = sum(x.nbytes for x in jax.tree.leaves((state.tables, state.slots)))
  saved = sum(x.nbytes for x in jax.tree.leaves((tree["buffers"], tree["slots"])))
  assert saved == tables  # the padded fused buffers, nothing cut out or added
