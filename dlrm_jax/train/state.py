"""TrainState: dense parameters beside the fused embedding tables; created already sharded."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.optim.dense import dense_optimizer
from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding import managed as managed_lib
from dlrm_jax.sharding.mesh import MODEL_AXIS
from dlrm_jax.sharding.planner import BUFFER_SPECS, EmbeddingLayout
from dlrm_jax.sharding.table_init import init_tables, table_seed

__all__ = [
  "TrainState",
  "create_train_state",
  "dense_optimizer",
  "init_dense_state",
  "state_shardings",
  "state_specs",
]


@flax.struct.dataclass
class TrainState:
  """All training state. Tables and their slots are updated sparsely, params by optax."""

  step: jax.Array  # i32[]
  params: Any  # Flax params of DenseModel, replicated
  opt_state: Any  # optax state of params, replicated
  tables: dict[str, jax.Array]  # buffer name -> f32[rows, dim] (see planner)
  slots: dict[str, dict[str, jax.Array]]  # buffer name -> sparse optimizer state
  # --id_mapping=managed: the maps raw id -> row beside the tables (sharding/managed.py); {}
  # otherwise.
  managed: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


def _slot_spec(buffer: str, slot: jax.ShapeDtypeStruct) -> P:
  if slot.ndim == 2:
    return BUFFER_SPECS[buffer]
  # Row-wise accumulators follow the rows: split only where rows are split.
  return P(MODEL_AXIS) if buffer == "sharded" else P()


def state_specs(state: TrainState) -> TrainState:
  """PartitionSpecs for every leaf of a (possibly abstract) TrainState."""
  return TrainState(
    step=P(),
    params=jax.tree.map(lambda _: P(), state.params),
    opt_state=jax.tree.map(lambda _: P(), state.opt_state),
    tables={name: BUFFER_SPECS[name] for name in state.tables},
    slots={
      name: {k: _slot_spec(name, v) for k, v in slots.items()}
      for name, slots in state.slots.items()
    },
    managed=managed_lib.state_specs(state.managed),
  )


def state_shardings(mesh: Mesh, state: TrainState) -> TrainState:
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec), state_specs(state), is_leaf=lambda x: isinstance(x, P)
  )


def dense_init(
  model: DenseModel,
  dense_tx: optax.GradientTransformation,
  num_tables: int,
  dim: int,
  num_dense: int = 13,
):
  """``key -> (params, opt_state)``: the dense half of create_train_state's state, from its key."""

  def init(key):
    dense_key, _ = jax.random.split(key)
    variables = model.init(dense_key, jnp.zeros((1, num_dense)), jnp.zeros((1, num_tables, dim)))
    params = variables["params"]
    return params, dense_tx.init(params)

  return init


def init_dense_state(
  model: DenseModel,
  dense_tx: optax.GradientTransformation,
  mesh: Mesh,
  key: jax.Array,
  num_tables: int,
  dim: int,
  num_dense: int = 13,
) -> tuple[Any, Any]:
  """(params, opt_state) as create_train_state makes them, replicated, in a program of their own.

  A run computes them while its data is prepared (they need no table size) and hands
  them to create_train_state(dense=...): their compilation is most of a cold init's.
  """
  init = dense_init(model, dense_tx, num_tables, dim, num_dense)
  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))(key)


def create_train_state(
  model: DenseModel,
  layout: EmbeddingLayout,
  sparse_opt: SparseOptimizer,
  dense_tx: optax.GradientTransformation,
  mesh: Mesh,
  key: jax.Array,
  num_dense: int = 13,
  managed: managed_lib.ManagedLayout | None = None,
  dense: tuple[Any, Any] | None = None,
) -> TrainState:
  """Initialises every array directly in its sharding; no table passes through the host.

  ``dense``: (params, opt_state) from init_dense_state with the same arguments and key,
  taken as they are (the same values this function computes without it).
  """
  make_tables = init_tables(layout, mesh)
  make_dense = dense_init(model, dense_tx, len(layout.placements), layout.dim, num_dense)

  def init(key, dense):
    _, table_key = jax.random.split(key)
    params, opt_state = make_dense(key) if dense is None else dense
    tables = make_tables(table_key)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=opt_state,
      tables=tables,
      slots={n: sparse_opt.init_slots(t) for n, t in tables.items()},
      managed={} if managed is None else managed_lib.init_state(managed, table_seed(table_key)),
    )

  shardings = state_shardings(mesh, jax.eval_shape(init, key, dense))
  return jax.jit(init, out_shardings=shardings)(key, dense)
