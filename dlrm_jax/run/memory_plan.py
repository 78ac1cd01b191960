"""Every program a run executes, compiled on abstract inputs: XLA's memory figures per device."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.checkpoint.tree import make_snapshot
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.sharding.planner import format_bytes
from dlrm_jax.train.components import Components
from dlrm_jax.train.state import TrainState, create_train_state, state_shardings
from dlrm_jax.train.step import BATCH_KEYS, batch_shardings, make_eval_step, make_train_step


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
  """One compiled program's bytes on one device (XLA's ``compiled.memory_analysis()``).

  ``resident``: held on the device while the program runs but not among its
  arguments: the next batch, which the loader puts on the devices ahead, and
  the parts of the state a program does not read (jit drops unused arguments
  from the executable, but the state stays allocated: eval reads no slots).
  """

  name: str
  arguments: int
  outputs: int
  aliased: int  # outputs written into donated arguments (counted once)
  temporaries: int
  resident: int = 0

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.resident


# --id_mapping=managed: the maps and row state beside the tables (the planner charges them too).
MAPS = "managed id maps"


def _sds(x, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def shard_bytes(x: Any) -> int:
  """Bytes of one device's shard of an abstract array with a sharding."""
  return math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize


def _bytes(tree) -> int:
  return sum(shard_bytes(x) for x in jax.tree.leaves(tree))


def abstract_state(c: Components, abstract: TrainState) -> TrainState:
  """The TrainState as ShapeDtypeStructs carrying their training shardings."""
  return jax.tree.map(_sds, abstract, state_shardings(c.mesh, abstract))


def abstract_batch(c: Components, batch_size: int, steps: int = 1) -> dict[str, Any]:
  """A host batch as the train or eval step receives it (``steps`` > 1: K stacked batches)."""
  sizes = c.config.bag_sizes(len(c.table_sizes))
  ids = sum(sizes) if sizes else len(c.table_sizes)
  shapes = {
    "dense": ((batch_size, cf.NUM_DENSE), jnp.float32),
    "sparse": ((batch_size, ids), jnp.int32),
    "label": ((batch_size,), jnp.float32),
    "mask": ((batch_size,), jnp.float32),
  }
  stacked = steps > 1
  shardings = batch_shardings(c.mesh, stacked)
  lead = (steps,) if stacked else ()
  return {
    k: jax.ShapeDtypeStruct(lead + shapes[k][0], shapes[k][1], sharding=shardings[k])
    for k in BATCH_KEYS
  }


def state_breakdown(state: TrainState) -> dict[str, int]:
  """Bytes per device of each part of the (abstract, sharded) state."""
  parts = {
    "embedding tables": _bytes(state.tables),
    "their optimizer slots": _bytes(state.slots),
    "dense parameters": _bytes(state.params),
    "dense optimizer state": _bytes(state.opt_state),
    "step counter": _bytes(state.step),
  }
  if state.managed:
    parts[MAPS] = _bytes(state.managed)
  return parts


def _figures(name: str, compiled, held: int = 0) -> ProgramMemory:
  """``held``: bytes allocated on the device while it runs, arguments or not."""
  m = compiled.memory_analysis()
  arguments = int(m.argument_size_in_bytes)
  return ProgramMemory(
    name,
    arguments,
    int(m.output_size_in_bytes),
    int(m.alias_size_in_bytes),
    int(m.temp_size_in_bytes),
    max(0, held - arguments),
  )


def run_programs(c: Components, abstract: TrainState) -> dict[str, Callable]:
  """A run's jitted programs by role: "train" (K steps), "train 1 step" (K > 1), "eval", and
  "checkpoint" (``make_snapshot``'s function; its ``device_program`` runs on the devices).

  A run that compiles them through ``compile_programs`` first calls the same
  objects afterwards: JAX's caches then hand it the executables compiled here.
  """
  model, layout, mesh, k = c.model, c.layout, c.mesh, c.config.resolved_steps_per_call
  train = functools.partial(
    make_train_step, model, layout, c.sparse_opt, c.dense_tx, mesh, abstract, managed=c.managed
  )
  programs = {"train": train(k)}
  if k > 1:
    programs["train 1 step"] = train(1)
  programs["eval"] = make_eval_step(model, layout, mesh, abstract, c.managed)
  programs["checkpoint"] = make_snapshot(layout, abstract, mesh, c.config.seed)
  return programs


def _lowered_programs(
  c: Components, abstract: TrainState, programs: dict[str, Callable]
) -> Iterator[tuple[str, Any, int]]:
  """(figure name, lowered program, bytes held beside its arguments) of every program but init,
  lowered on abstract inputs with the shardings the run's calls will have."""
  config = c.config
  state = abstract_state(c, abstract)
  live = _bytes(state)
  k = config.resolved_steps_per_call
  for name, steps in (("train", k), ("train 1 step", 1)):
    if name not in programs:
      continue
    batch = abstract_batch(c, config.batch_size, steps)
    # The loader puts the next call's batch on the devices while this one runs.
    yield f"{name} (K={steps})", programs[name].lower(state, batch), live + 2 * _bytes(batch)
  batch = abstract_batch(c, config.eval_batch_size)
  yield "eval", programs["eval"].lower(state, batch), live + _bytes(batch)
  yield "checkpoint", programs["checkpoint"].device_program.lower(state), live


def compile_programs(
  c: Components, abstract: TrainState, programs: dict[str, Callable] | None = None
) -> tuple[list[ProgramMemory], Any]:
  """Lowers and compiles, on abstract inputs (nothing allocated), every program a run executes.

  The init program (create_train_state), the train call of --steps_per_call K
  steps and, where K > 1, the single step (a resume mid-call, the last steps),
  the eval step, and the device side of a checkpoint save (its finiteness check);
  ``programs`` (``run_programs``) the run's own jitted ones. Returns their figures
  and the compiled init, ``init(key) -> TrainState``.
  """
  config, mesh = c.config, c.mesh
  programs = programs if programs is not None else run_programs(c, abstract)
  rep = NamedSharding(mesh, P())
  key = jax.eval_shape(lambda: jax.random.key(config.seed))
  init = (
    jax.jit(
      lambda k: create_train_state(
        c.model, c.layout, c.sparse_opt, c.dense_tx, mesh, k, managed=c.managed
      ),
      out_shardings=state_shardings(mesh, abstract),
    )
    .lower(_sds(key, rep))
    .compile()
  )
  out = [_figures("init", init)]
  for name, lowered, held in _lowered_programs(c, abstract, programs):
    out.append(_figures(name, lowered.compile(), held))
  return out, init


def compile_in_background(
  c: Components, abstract: TrainState, programs: dict[str, Callable], *, skip: tuple[str, ...] = ()
) -> Future:
  """Compiles ``programs`` (all but init) on abstract inputs in a background thread.

  XLA then compiles them while the caller initialises or restores the state (the init
  program compiles on the caller's thread). The run's first calls find the executables in
  JAX's in-memory caches; wait for the future before them, so that nothing compiles twice.
  ``skip``: names of programs the run will not call (they compile on a first call, if any).
  """
  wanted = {name: f for name, f in programs.items() if name not in skip}

  def compile_all() -> None:
    for _, lowered, _ in _lowered_programs(c, abstract, wanted):
      lowered.compile()

  pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
  future = pool.submit(compile_all)
  pool.shutdown(wait=False)
  return future


def over_limit(programs: list[ProgramMemory], limit: int) -> list[ProgramMemory]:
  return [p for p in programs if p.peak > limit]


def table_text(
  programs: list[ProgramMemory], state: dict[str, int], planner: int, num_devices: int
) -> str:
  """The per-device table: the state's parts, each program's figures, the peak."""
  g = format_bytes
  which = "device 0" if num_devices == 1 else f"each of devices 0-{num_devices - 1}"
  lines = [
    f"memory per device ({which}: one SPMD program, the same figures on every device)",
    f"  {'state':<30} {'compiler':>12} {'planner':>12}",
  ]
  tables = state["embedding tables"] + state["their optimizer slots"] + state.get(MAPS, 0)
  for name, b in state.items():
    lines.append(f"  {name:<30} {g(b):>12}")
  what = "tables + slots + maps" if MAPS in state else "tables + slots"
  lines.append(f"  {what:<30} {g(tables):>12} {g(planner):>12}")
  lines.append(
    f"  {'program':<18} {'arguments':>11} {'outputs':>11} {'aliased':>11} "
    f"{'temporaries':>12} {'resident':>11} {'peak':>11}"
  )
  for p in programs:
    lines.append(
      f"  {p.name:<18} {g(p.arguments):>11} {g(p.outputs):>11} {g(p.aliased):>11} "
      f"{g(p.temporaries):>12} {g(p.resident):>11} {g(p.peak):>11}"
    )
  top = max(programs, key=lambda p: p.peak)
  lines.append(f"  peak: {g(top.peak)} ({top.name}); peak = arguments + outputs - aliased")
  lines.append("        + temporaries + resident (state a program does not read, the next batch)")
  return "\n".join(lines)
