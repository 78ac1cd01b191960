"""What a checkpoint holds (format 2): the tree to save, its layout metadata, the restore target.

The fused embedding buffers are saved as training shards them; the layout
(``table_io.layout_to_json``) says where each table's rows lie, so that a
restore onto another mesh or plan can cut every table out of them. Managed
tables (--id_mapping=managed) add their maps (``managed``), saved as sharded
too; onto another model-axis size they are re-laid out id by id (``managed_io``).
"""

from __future__ import annotations

from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.checkpoint import managed_io, table_io
from dlrm_jax.sharding import managed as managed_lib
from dlrm_jax.sharding.mesh import MODEL_AXIS
from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.train.state import TrainState, state_shardings


def _sds(x, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def layout_meta(layout: EmbeddingLayout, abstract_state: TrainState) -> dict[str, Any]:
  """What a restore needs to read the saved buffers: the layout, dtype and slot shapes."""
  slots = next((s for s in abstract_state.slots.values() if s), {})
  buf = next(iter(abstract_state.tables.values()))
  meta = {
    "layout": table_io.layout_to_json(layout),
    "dtype": str(buf.dtype),
    "slots": {k: [list(v.shape[1:]), str(v.dtype)] for k, v in slots.items()},
  }
  if abstract_state.managed:
    meta["managed"] = sorted(abstract_state.managed)  # the maps' arrays (none: not managed)
  return meta


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
    if state.managed:
      tree["managed"] = dict(state.managed)
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
    if abstract_state.managed:
      buffers["managed"] = jax.tree.map(_sds, abstract_state.managed, shardings.managed)
    saved = None
  else:
    tails = {k: (tuple(t), jnp.dtype(d)) for k, (t, d) in meta["layout"]["slots"].items()}
    buffers = table_io.buffers_abstract(saved, tails, jnp.dtype(meta["layout"]["dtype"]), mesh)
    buffers["slots"] = _nonempty(buffers["slots"])
    if abstract_state.managed:
      buffers["managed"] = _saved_managed_abstract(saved, mesh)
  return {**_dense_abstract(abstract_state, mesh), **buffers}, saved


def _saved_managed_abstract(saved: EmbeddingLayout, mesh: Mesh) -> dict:
  """The maps of a managed checkpoint laid out by ``saved``, spread over ``mesh`` to be read."""
  m = dict(mesh.shape).get(MODEL_AXIS, 1)
  ml = managed_lib.managed_layout(saved)
  shapes = jax.eval_shape(lambda: managed_lib.init_state(ml, jnp.zeros((2,), jnp.uint32)))
  return {
    k: _sds(v, NamedSharding(mesh, table_io.logical_spec(v.shape, m))) for k, v in shapes.items()
  }


def to_state(
  tree: dict,
  saved: EmbeddingLayout | str | None,
  layout: EmbeddingLayout,
  abstract_state: TrainState,
  mesh: Mesh,
  managed: managed_lib.ManagedLayout | None = None,
) -> TrainState:
  """The TrainState of a restored tree (``saved`` as ``restore_target`` returned it).

  ``managed``: the maps' layout on ``layout`` (its policy ranks the ids kept where a new
  shard has fewer rows than ids); None: ``managed_layout(layout)``, least recently used.
  """
  opt_state = flax.serialization.from_state_dict(abstract_state.opt_state, tree["opt_state"])
  maps = tree.get("managed", {})
  if abstract_state.managed and saved is not None:
    ml = managed or managed_lib.managed_layout(layout)
    tables, slots, maps = managed_io.rebuild(saved, tree, layout, ml, abstract_state, mesh)
  elif saved == LOGICAL:
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
    step=tree["step"],
    params=tree["params"],
    opt_state=opt_state,
    tables=tables,
    slots=slots,
    managed=maps,
  )
