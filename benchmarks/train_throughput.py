"""Train-step throughput of the Criteo-Kaggle-size DLRM on random ids.

python benchmarks/train_throughput.py [--batch_sizes=128,2048] [--steps=30]

Prints, per batch size: samples/s (median over timed windows), the model's
GFLOP/s against a same-process XLA matmul's GFLOP/s, and peak RSS against
the bytes of tables + optimizer state + dense parameters.
"""

from __future__ import annotations

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dlrm_jax.data.criteo_format import KAGGLE_TABLE_SIZES, NUM_DENSE, SPARSE_NAMES
from dlrm_jax.interaction import interaction_width
from dlrm_jax.mesh import make_mesh, model_size
from dlrm_jax.model import DenseModel
from dlrm_jax.planner import plan_layout
from dlrm_jax.sparse_optim import SparseOptimizer
from dlrm_jax.specs import table_specs
from dlrm_jax.train_state import create_train_state, dense_optimizer
from dlrm_jax.train_step import batch_shardings, make_train_step

flags.DEFINE_list("batch_sizes", ["128", "2048"], "Global batch sizes to measure.")
flags.DEFINE_integer("steps", 30, "Timed steps per window.")
flags.DEFINE_integer("windows", 5, "Timed windows per batch size (the median is reported).")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adagrad", "rowwise_adagrad"], "Table optimizer.")
flags.DEFINE_integer("embedding_dim", 16, "Embedding width.")
FLAGS = flags.FLAGS

BOTTOM, TOP = (512, 256, 64, 16), (512, 256, 1)


def mlp_macs(widths_in: int, widths) -> int:
  macs, prev = 0, widths_in
  for w in widths:
    macs += prev * w
    prev = w
  return macs


def model_flops_per_sample(dim: int, num_tables: int) -> float:
  """Forward + backward (3x forward) FLOPs of the MLPs and the dot interaction."""
  f = num_tables + 1
  forward_macs = (
    mlp_macs(NUM_DENSE, BOTTOM)
    + mlp_macs(interaction_width("dot", num_tables, dim), TOP)
    + f * f * dim
  )
  return 3 * 2 * forward_macs


_matmul = jax.jit(lambda a, b: a @ b)


def matmul_gflops(n=2048, k=512, m=512, reps=20) -> float:
  """The machine's attainable f32 GFLOP/s right now (median of ``reps`` matmuls)."""
  a = jnp.ones((n, k), jnp.float32)
  b = jnp.ones((k, m), jnp.float32)
  f = _matmul
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n * k * m / statistics.median(times) / 1e9


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def random_batch(rng: np.random.Generator, specs, batch_size: int, mesh) -> dict[str, jax.Array]:
  """Uniformly random ids over every table: the worst case for the row cache."""
  sparse = np.stack([rng.integers(0, s.rows, batch_size) for s in specs], 1).astype(np.int32)
  batch = {
    "dense": rng.random((batch_size, NUM_DENSE), np.float32),
    "sparse": sparse,
    "label": rng.integers(0, 2, batch_size).astype(np.float32),
    "mask": np.ones(batch_size, np.float32),
  }
  return jax.device_put(batch, batch_shardings(mesh))


def reference_step(specs, mesh, optimizer: str = "sgd"):
  """The reference Kaggle architecture over ``specs``: (jitted train step, initial state)."""
  dim = specs[0].dim
  sparse_opt = SparseOptimizer(optimizer, 0.1)
  slot_floats = sparse_opt.slot_floats_per_row(dim)
  layout = plan_layout(specs, model_size(mesh), slot_floats_per_row=slot_floats)
  model = DenseModel(BOTTOM, TOP, "dot")
  tx = dense_optimizer(optimizer, 0.1)
  state = create_train_state(model, layout, sparse_opt, tx, mesh, jax.random.key(0))
  jax.block_until_ready(state)
  step = make_train_step(model, layout, sparse_opt, tx, mesh, jax.eval_shape(lambda s: s, state))
  return step, state


def timed_window(step, state, batches, steps: int):
  """Runs ``steps`` steps cycling through ``batches``: (seconds, state)."""
  t = time.perf_counter()
  for i in range(steps):
    state, out = step(state, batches[i % len(batches)])
  out["loss"].block_until_ready()
  return time.perf_counter() - t, state


def main(argv):
  del argv
  dim = FLAGS.embedding_dim
  mesh = make_mesh()
  specs = table_specs(list(SPARSE_NAMES), list(KAGGLE_TABLE_SIZES), dim)
  t0 = time.perf_counter()
  step, state = reference_step(specs, mesh, FLAGS.optimizer)
  init_s = time.perf_counter() - t0
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  flops = model_flops_per_sample(dim, len(specs))
  print(
    f"devices: {jax.device_count()} x {jax.devices()[0].platform}; tables: {len(specs)} "
    f"Kaggle sizes, {sum(s.rows for s in specs):,} rows, dim {dim}; optimizer {FLAGS.optimizer}"
  )
  print(
    f"state: {state_bytes / 2**30:.2f} GiB (tables + optimizer state + dense params); "
    f"initialised in {init_s:.1f} s; model {flops / 1e6:.2f} MFLOP/sample (fwd+bwd)"
  )
  rng = np.random.default_rng(0)
  rows = []
  for batch_size in map(int, FLAGS.batch_sizes):
    batches = [random_batch(rng, specs, batch_size, mesh) for _ in range(8)]
    _, state = timed_window(step, state, batches, 1)  # compile
    # Step windows alternate with matmul windows so both see the same machine
    # load; the ratio is the median of per-window ratios.
    rates, matmuls = [], []
    for _ in range(FLAGS.windows):
      seconds, state = timed_window(step, state, batches, FLAGS.steps)
      rates.append(FLAGS.steps * batch_size / seconds)
      matmuls.append(matmul_gflops(reps=10))
    ratios = [r * flops / 1e9 / mm for r, mm in zip(rates, matmuls, strict=True)]
    rows.append(
      (
        batch_size,
        statistics.median(rates),
        statistics.median(rates) * flops / 1e9,
        statistics.median(matmuls),
        statistics.median(ratios),
      )
    )
  rss = peak_rss_bytes()
  print(f"{'batch':>6} {'samples/s':>10} {'model GFLOP/s':>14} {'matmul GFLOP/s':>15} {'ratio':>6}")
  for batch_size, rate, model_gflops, mm, ratio in rows:
    print(f"{batch_size:>6} {rate:>10,.0f} {model_gflops:>14.1f} {mm:>15.1f} {ratio:>6.2f}")
  print(
    f"peak RSS {rss / 2**30:.2f} GiB = {rss / state_bytes:.2f} x state "
    f"({state_bytes / 2**30:.2f} GiB)"
  )


if __name__ == "__main__":
  app.run(main)
