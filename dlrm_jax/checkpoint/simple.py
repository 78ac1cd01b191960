"""save_checkpoint / restore_checkpoint: a TrainState to disk and back, without a Config.

The library's entry to checkpoints (docs/api.md). It writes the format ``--mode=train`` writes
(``CheckpointStore``), so a restore may use another mesh or plan than the save did.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from dlrm_jax.checkpoint.manager import FORMAT, CheckpointStore
from dlrm_jax.checkpoint.tree import layout_meta, make_snapshot
from dlrm_jax.faults import CheckpointError
from dlrm_jax.sharding.managed import ManagedLayout
from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.train.state import TrainState


def save_checkpoint(directory: str, state: TrainState, layout: EmbeddingLayout, mesh: Mesh) -> str:
  """Writes ``state`` to ``directory/checkpoints/<state.step>`` and waits; returns that path.

  Raises CheckpointError if the state holds a non-finite value (nothing is written then).
  """
  abstract = jax.eval_shape(lambda s: s, state)
  tree, finite = make_snapshot(layout, abstract, mesh, seed=0)(state)
  step = int(state.step)
  store = CheckpointStore(directory)
  try:
    if not bool(finite):
      raise CheckpointError(f"step {step}: the state holds non-finite values; not saved")
    meta = {
      "format": FORMAT,
      "step": step,
      "finite": True,
      "layout": layout_meta(layout, abstract),
    }
    store.save(step, tree, meta)
    store.wait()
    return store.step_path(step)
  finally:
    store.close()


def restore_checkpoint(
  directory: str,
  layout: EmbeddingLayout,
  abstract_state: TrainState,
  mesh: Mesh,
  step: int | None = None,
  managed: ManagedLayout | None = None,
) -> TrainState:
  """The state saved under ``directory`` (the latest step unless given), onto ``mesh``/``layout``.

  ``abstract_state``: ``jax.eval_shape`` of a state built for this mesh and layout
  (``create_train_state``); the saved tables are re-cut when the layout differs. A state with
  managed tables (``create_train_state(..., managed=)``) takes their ``managed`` layout, whose
  eviction policy decides which ids a smaller shard keeps (default: least recently used).
  """
  store = CheckpointStore(directory, read_only=True)
  try:
    if step is None:
      step = store.latest_step()
      if step is None:
        raise CheckpointError(f"no checkpoints under {store.directory}")
    return store.restore_step(
      step, layout, abstract_state, mesh, None, resume=False, managed=managed
    ).state
  finally:
    store.close()
