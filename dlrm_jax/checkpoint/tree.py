"""What a checkpoint holds (format 2): the tree to save, its layout metadata, the restore target.

The fused embedding buffers are saved as training shards them; the layout
(``table_io.layout_to_json``) says where each table's rows lie, so that a
restore onto another mesh or plan can cut every table out of them.
"""

from __future__ import annotations

from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.checkpoint import table_io
from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.train.state import TrainState, state_shardings


def _sds(x, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def layout_meta(layout: EmbeddingLayout, abstract_state: TrainState) -> dict[str, Any]:
  """What a restore needs to read the saved buffers: the layout, dtype and slot shapes."""
  slots = next((s for s in abstract_state.slots.values() if s), {})
  buf = next(iter(abstract_state.tables.values()))
  return {
    "layout": table_io.layout_to_json(layout),
    "dtype": str(buf.dtype),
    "slots": {k: [list(v.shape[1:]), str(v.dtype)] for k, v in slots.items()},
  }


def _dense_abstract(abstract_state: TrainState, mesh: Mesh) -> dict:
  shardings = state_shardings(mesh, abstract_state)
  rep = NamedSharding(mesh, P())
  return {
    "step": _sds(abstract_state.step, rep),
    "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
    "params": jax.tree.map(_sds, abstract_state.params, shardings.params),
    "opt_state": flax.serialization.to_state_dict(
      jax.tree.map(_sds, abstract_state.opt_state, shardings.opt_state)
    ),
  }


def _nonempty(slots: dict) -> dict:
  return {name: dict(s) for name, s in slots.items() if s}


def make_snapshot(layout: EmbeddingLayout, abstract_state: TrainState, mesh: Mesh, seed: int):
  """``state -> (tree to save, all finite?)``; the tree holds the state's own buffers.

  No table is copied or resharded: Orbax writes each device's shard of the
  fused buffers as it lies, and ``CheckpointStore.save`` returns only once
  every shard has reached host memory (Orbax's synchronous device-to-host
  phase), so the next donating train step may reuse the device buffers.
  Only the check for non-finite values runs on the devices (a reduction).
  """
  rep = NamedSharding(mesh, P())

  def check(state: TrainState):
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats]))
    return jax.random.key_data(jax.random.key(seed)), finite

  check = jax.jit(check, out_shardings=(rep, rep))

  def snapshot(state: TrainState):
    rng, finite = check(state)
    tree = {
      "step": state.step,
      "rng": rng,
      "params": state.params,
      "opt_state": flax.serialization.to_state_dict(state.opt_state),
      "buffers": dict(state.tables),
      "slots": _nonempty(state.slots),
    }
    return tree, finite

  snapshot.device_program = check  # what runs on the devices: --dry_run compiles it
  return snapshot


LOGICAL = "logical"  # format 1: every table saved as its own array


def restore_target(
  meta: dict[str, Any], layout: EmbeddingLayout, abstract_state: TrainState, mesh: Mesh
) -> tuple[dict, EmbeddingLayout | str | None]:
  """(abstract tree to restore onto ``mesh``, how its tables are laid out).

  The second item is None on the same layout: every device reads its own shards
  back into the training shardings. Otherwise it is the saved layout, whose
  buffers are read spread over ``mesh``'s model axis, to be re-laid out table by
  table (``to_state``), or LOGICAL for a format-1 checkpoint of per-table arrays.
  """
  if meta["format"].endswith("/1"):
    return {
      **_dense_abstract(abstract_state, mesh),
      **table_io.logical_abstract(layout, abstract_state, mesh),
    }, LOGICAL
  saved = table_io.layout_from_json(meta["layout"]["layout"])
  if saved == layout:
    shardings = state_shardings(mesh, abstract_state)
    buffers = {
      "buffers": jax.tree.map(_sds, abstract_state.tables, shardings.tables),
      "slots": _nonempty(jax.tree.map(_sds, abstract_state.slots, shardings.slots)),
    }
    saved = None
  else:
    tails = {k: (tuple(t), jnp.dtype(d)) for k, (t, d) in meta["layout"]["slots"].items()}
    buffers = table_io.buffers_abstract(saved, tails, jnp.dtype(meta["layout"]["dtype"]), mesh)
    buffers["slots"] = _nonempty(buffers["slots"])
  return {**_dense_abstract(abstract_state, mesh), **buffers}, saved


def to_state(
  tree: dict,
  saved: EmbeddingLayout | str | None,
  layout: EmbeddingLayout,
  abstract_state: TrainState,
  mesh: Mesh,
) -> TrainState:
  """The TrainState of a restored tree (``saved`` as ``restore_target`` returned it)."""
  opt_state = flax.serialization.from_state_dict(abstract_state.opt_state, tree["opt_state"])
  if saved == LOGICAL:
    tables, slots = table_io.fill_buffers(
      layout,
      lambda name, slot: tree["tables"][name] if slot is None else tree["slots"][name][slot],
      abstract_state,
      mesh,
    )
  elif saved is None:
    tables = tree["buffers"]
    slots = {name: tree["slots"].get(name, {}) for name in abstract_state.slots}
  else:
    tables, slots = table_io.rebuild(
      saved, {"buffers": tree["buffers"], "slots": tree["slots"]}, layout, abstract_state, mesh
    )
  return TrainState(
    step=tree["step"], params=tree["params"], opt_state=opt_state, tables=tables, slots=slots
  )
