"""Where a train step's time goes: each phase of the Kaggle-size step timed as its own program.

python benchmarks/step_profile.py [--batch_sizes=128,2048] [--steps=30] [--windows=5]

On one device, for each batch size: the full step as one dispatch per step,
the same step run ``--steps`` times inside one ``lax.scan`` (no dispatch), and
the phases jitted alone: embedding lookup, bottom MLP, interaction, top MLP
(forward), the dense backward (forward+backward minus forward), the dense
optimizer, and the sparse update (gradient routing plus the table update).
Dispatch/host is the per-step difference between the dispatched and the
scanned step; "fusion and rest" is the scanned step minus the phases' sum
(negative when XLA fuses across phases). Medians of ``--windows`` windows.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from jax import lax
from train_throughput import TOP, random_batch, reference_step

from dlrm_jax.data.criteo_format import KAGGLE_TABLE_SIZES, SPARSE_NAMES
from dlrm_jax.embedding import lookup, route_gradients
from dlrm_jax.interaction import interact
from dlrm_jax.mesh import make_mesh, model_size
from dlrm_jax.model import MLP, DenseModel
from dlrm_jax.planner import plan_layout
from dlrm_jax.sparse_optim import SparseOptimizer
from dlrm_jax.specs import table_specs

# --batch_sizes, --steps (per window) and --windows are train_throughput's flags.
FLAGS = flags.FLAGS


def _time(fn, args, reps: int, windows: int) -> float:
  """Median seconds per call of ``fn(*args)``, dispatched back to back."""
  jax.block_until_ready(fn(*args))
  out = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(reps):
      r = fn(*args)
    jax.block_until_ready(r)
    out.append((time.perf_counter() - t) / reps)
  return statistics.median(out)


def _time_step(step, state, batches, reps: int, windows: int):
  """Median seconds per dispatched step; returns (seconds, state)."""
  out = []
  for w in range(windows + 1):
    t = time.perf_counter()
    for i in range(reps):
      state, m = step(state, batches[i % len(batches)])
    m["loss"].block_until_ready()
    if w:  # the first window compiles
      out.append((time.perf_counter() - t) / reps)
  return statistics.median(out), state


def profile(batch_size: int, step, state, layout, model, mesh, rng, specs):
  reps, windows = FLAGS.steps, FLAGS.windows
  batches = [random_batch(rng, specs, batch_size, mesh) for _ in range(4)]
  b0 = batches[0]
  dispatched, state = _time_step(step, state, batches, reps, windows)

  stacked = jax.tree.map(lambda *xs: jnp.stack([xs[i % len(xs)] for i in range(reps)]), *batches)
  scanned = jax.jit(lambda s, bs: lax.scan(lambda c, b: step(c, b), s, bs), donate_argnums=(0,))
  times = []
  for w in range(windows + 1):
    t = time.perf_counter()
    state, m = scanned(state, stacked)
    m["loss"].block_until_ready()
    if w:
      times.append((time.perf_counter() - t) / reps)
  in_scan = statistics.median(times)

  params = state.params
  emb_fn = jax.jit(
    jax.shard_map(
      lambda t, ids: lookup(layout, t, ids),
      mesh=mesh,
      in_specs=(jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec()),
      out_specs=jax.sharding.PartitionSpec(),
      check_vma=False,
    )
  )
  emb = emb_fn(state.tables, b0["sparse"])
  bottom_mlp = MLP(model.bottom_mlp, relu_last=True)
  top_mlp = MLP(model.top_mlp, relu_last=False)
  bottom_fn = jax.jit(lambda p, x: bottom_mlp.apply({"params": p}, x))
  bottom = bottom_fn(params["bottom_mlp"], b0["dense"])
  inter_fn = jax.jit(lambda bo, e: interact(model.interaction, bo, e))
  z = inter_fn(bottom, emb)
  top_fn = jax.jit(lambda p, x: top_mlp.apply({"params": p}, x))

  def loss(p, e, batch):
    logits = model.apply({"params": p}, batch["dense"], e)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["label"]))

  fwd_fn = jax.jit(loss)
  fwdbwd_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  _, (pgrads, egrads) = fwdbwd_fn(params, emb, b0)
  tx = optax.sgd(0.1)
  opt_state = tx.init(params)
  dense_upd = jax.jit(lambda g, o, p: optax.apply_updates(p, tx.update(g, o, p)[0]))
  sparse_opt = SparseOptimizer("sgd", 0.1)

  def sparse_update(tables, ids, grads):
    routed = route_gradients(layout, ids, grads)
    out = dict(tables)
    for name, r in routed.items():
      out[name], _ = sparse_opt.apply(tables[name], {}, r.rows, r.grads, r.valid)
    return out

  P = jax.sharding.PartitionSpec
  sparse_fn = jax.jit(
    jax.shard_map(
      sparse_update, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P(), check_vma=False
    ),
    donate_argnums=(0,),
  )
  tables = state.tables
  jax.block_until_ready(tables := sparse_fn(tables, b0["sparse"], egrads))
  sparse_times = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(reps):
      tables = sparse_fn(tables, b0["sparse"], egrads)
    jax.block_until_ready(tables)
    sparse_times.append((time.perf_counter() - t) / reps)
  state = state.replace(tables=tables)

  fwd = _time(fwd_fn, (params, emb, b0), reps, windows)
  parts = {
    "embedding lookup": _time(emb_fn, (state.tables, b0["sparse"]), reps, windows),
    "bottom MLP (fwd)": _time(bottom_fn, (params["bottom_mlp"], b0["dense"]), reps, windows),
    "interaction (fwd)": _time(inter_fn, (bottom, emb), reps, windows),
    "top MLP (fwd)": _time(top_fn, (params["top_mlp"], z), reps, windows),
    "dense backward": _time(fwdbwd_fn, (params, emb, b0), reps, windows) - fwd,
    "dense optimizer": _time(dense_upd, (pgrads, opt_state, params), reps, windows),
    "sparse update": statistics.median(sparse_times),
  }
  parts["fusion and rest"] = in_scan - sum(parts.values())
  parts["dispatch/host"] = dispatched - in_scan
  return dispatched, in_scan, parts, state


def main(argv):
  del argv
  mesh = make_mesh()
  if jax.device_count() != 1:
    raise SystemExit("step_profile needs one device: unset xla_force_host_platform_device_count")
  specs = table_specs(list(SPARSE_NAMES), list(KAGGLE_TABLE_SIZES), 16)
  step, state = reference_step(specs, mesh)
  layout = plan_layout(specs, model_size(mesh))
  model = DenseModel((512, 256, 64, 16), TOP, "dot")
  rng = np.random.default_rng(0)
  for batch_size in map(int, FLAGS.batch_sizes):
    dispatched, in_scan, parts, state = profile(
      batch_size, step, state, layout, model, mesh, rng, specs
    )
    print(
      f"batch {batch_size}: {dispatched * 1e3:.2f} ms/step dispatched one by one, "
      f"{in_scan * 1e3:.2f} ms/step inside one scan"
    )
    for name, s in parts.items():
      print(f"  {name:<20} {s * 1e3:7.2f} ms  {100 * s / dispatched:5.1f} %")


if __name__ == "__main__":
  app.run(main)
