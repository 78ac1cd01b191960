"""Train-step throughput of the Criteo-Kaggle-size DLRM (or MLPerf's) on random ids.

python benchmarks/train_throughput.py [--batch_sizes=128,2048] [--steps=30]
    [--steps_per_call=1] [--compute_dtype=float32|bfloat16|both] [--model=kaggle|mlperf]
    [--max_table_rows=0] [--id_mapping=vocabulary|hash|managed[,...]]

Prints, per batch size and compute dtype: samples/s (median over timed windows),
the model's GFLOP/s against the fastest of three same-process 2048x512x512 XLA
matmuls (f32; bf16 x bf16 -> f32, the form of --compute_dtype=bfloat16's dots;
bf16 x bf16 -> bf16), its ratio to the matmul of its own dtype, and peak RSS
against the bytes of tables + optimizer state + dense parameters. ``both`` times
bf16 and f32 steps in alternating windows of one process, on one shared state,
and prints bf16's speed-up over f32. With
--multi_hot_sizes, then the same model with bags of those sizes (sum pooling,
one step per call): samples/s and ids/s against the one-hot figure, each also
normalised by the matmul timed in its own windows. With several --id_mapping values
(vocabulary,managed, say), each is timed in alternating windows of one process on the
same random ids, and each one's samples/s ratio to vocabulary is printed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dlrm_jax.config import auto_steps_per_call
from dlrm_jax.data.criteo_format import KAGGLE_TABLE_SIZES, NUM_DENSE, SPARSE_NAMES
from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.model.interaction import interaction_width
from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding.managed import MANAGED_FLOATS_PER_ROW, managed_layout
from dlrm_jax.sharding.mesh import make_mesh, model_size
from dlrm_jax.sharding.planner import plan_layout
from dlrm_jax.sharding.specs import table_specs
from dlrm_jax.train.state import create_train_state, dense_optimizer
from dlrm_jax.train.step import batch_shardings, make_train_step

flags.DEFINE_list("batch_sizes", ["128", "2048"], "Global batch sizes to measure.")
flags.DEFINE_integer("steps", 30, "Timed steps per window.")
flags.DEFINE_integer("windows", 5, "Timed windows per batch size (the median is reported).")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adagrad", "rowwise_adagrad"], "Table optimizer.")
flags.DEFINE_integer("embedding_dim", 0, "Embedding width; 0 = the --model's (16 or 128).")
flags.DEFINE_integer(
  "steps_per_call",
  0,
  "Train steps per dispatch (a lax.scan over stacked batches); 0 (default) = what "
  "training's --steps_per_call=0 picks for the batch size (up to 16). --steps is rounded "
  "up to whole calls.",
)
flags.DEFINE_enum(
  "compute_dtype",
  "float32",
  ["float32", "bfloat16", "both"],
  "Operand dtype of the model's dots (model/policy.py); both = bfloat16 and float32 in "
  "alternating windows of one process.",
)
flags.DEFINE_enum(
  "model",
  "kaggle",
  ["kaggle", "mlperf"],
  "kaggle: 26 Kaggle tables, dim 16, bottom 512-256-64-16, top 512-256-1; mlperf (v1): "
  "26 Criteo-1TB tables capped at 40M rows (204M rows), dim 128, bottom 512-256-128, "
  "top 1024-1024-512-256-1.",
)
flags.DEFINE_list(
  "multi_hot_sizes",
  [],
  "Also measure bags of these sizes (one per table, or one for all; sum pooling); "
  "empty (default) = one-hot only.",
)
flags.DEFINE_integer(
  "max_table_rows", 0, "Cap every table at this many rows (to fit a device or a test); 0 = none."
)
flags.DEFINE_list(
  "id_mapping",
  ["vocabulary"],
  "How ids reach the tables, one or several (timed in alternating windows of one process): "
  "vocabulary (ids in [0, rows)); hash (raw uint32 ids, a bijection of those ids, taken "
  "% rows on the host as --id_mapping=hash does); managed (the same raw ids mapped to rows "
  "on the devices, capacity = the table sizes so nothing is evicted). Default vocabulary.",
)
flags.DEFINE_bool(
  "fresh_ids",
  False,
  "Every timed step draws new random ids (else 8 batches are cycled): under managed most ids "
  "are then new, so every step inserts, the map's costliest path.",
)
FLAGS = flags.FLAGS
MAPPINGS = ("vocabulary", "hash", "managed")

BOTTOM, TOP = (512, 256, 64, 16), (512, 256, 1)
# MLPerf DLRM v1/v2 on Criteo 1TB: ids modulo 40M, so the big tables have 40M rows.
MLPERF_TABLE_SIZES = (
  40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
  2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)  # fmt: skip
MODELS = {
  # name: (table sizes, dim, bottom MLP, top MLP)
  "kaggle": (KAGGLE_TABLE_SIZES, 16, BOTTOM, TOP),
  "mlperf": (MLPERF_TABLE_SIZES, 128, (512, 256, 128), (1024, 1024, 512, 256, 1)),
}


def mlp_macs(widths_in: int, widths) -> int:
  macs, prev = 0, widths_in
  for w in widths:
    macs += prev * w
    prev = w
  return macs


def model_flops_per_sample(dim: int, num_tables: int, bottom=BOTTOM, top=TOP) -> float:
  """Forward + backward (3x forward) FLOPs of the MLPs and the dot interaction."""
  f = num_tables + 1
  forward_macs = (
    mlp_macs(NUM_DENSE, bottom)
    + mlp_macs(interaction_width("dot", num_tables, dim), top)
    + f * f * dim
  )
  return 3 * 2 * forward_macs


# The three matmul forms: (operand dtype, result dtype).
MATMULS = {
  "f32": (jnp.float32, jnp.float32),
  "bf16->f32": (jnp.bfloat16, jnp.float32),
  "bf16->bf16": (jnp.bfloat16, jnp.bfloat16),
}
# The form the model's dots take under each --compute_dtype (model/policy.py).
OWN_MATMUL = {"float32": "f32", "bfloat16": "bf16->f32"}


@functools.cache
def _matmul(out_dtype):
  return jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=out_dtype))


def matmul_gflops(n=2048, k=512, m=512, reps=20, form="f32") -> float:
  """Attainable GFLOP/s of matmul ``form`` (MATMULS) right now: median of ``reps``."""
  dtype, out_dtype = MATMULS[form]
  a = jnp.ones((n, k), dtype)
  b = jnp.ones((k, m), dtype)
  f = _matmul(out_dtype)
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n * k * m / statistics.median(times) / 1e9


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def host_batch(rng: np.random.Generator, specs, batch_size: int) -> dict[str, np.ndarray]:
  """Uniformly random ids over every table: the worst case for the row cache."""
  sparse = np.stack([rng.integers(0, s.rows, batch_size) for s in specs], 1).astype(np.int32)
  return {
    "dense": rng.random((batch_size, NUM_DENSE), np.float32),
    "sparse": sparse,
    "label": rng.integers(0, 2, batch_size).astype(np.float32),
    "mask": np.ones(batch_size, np.float32),
  }


def random_batch(rng: np.random.Generator, specs, batch_size: int, mesh) -> dict[str, jax.Array]:
  return jax.device_put(host_batch(rng, specs, batch_size), batch_shardings(mesh))


def raw_ids(ids: np.ndarray) -> np.ndarray:
  """u32[B, T]: a bijection of [0, 2^32) per table (odd multiplier, per-table offset), so the
  raw ids have the same frequencies and distinct count as ``ids`` but look like hashes."""
  offset = np.arange(1, ids.shape[1] + 1, dtype=np.uint64) * np.uint64(0x6A09E667)
  return ((ids.astype(np.uint64) * np.uint64(0x9E3779B1) + offset) % (1 << 32)).astype(np.uint32)


def mapped_batch(batch: dict[str, np.ndarray], specs, mapping: str, mesh) -> dict[str, jax.Array]:
  """``host_batch``'s batch as ``mapping`` feeds it to the step (see --id_mapping)."""
  sparse = batch["sparse"]
  if mapping != "vocabulary":
    raw = raw_ids(sparse)
    if mapping == "hash":  # components.check_ids: raw % rows on the host
      sparse = (raw % np.array([s.rows for s in specs], np.uint32)).astype(np.int32)
    else:  # managed: the raw values' bits; the step maps them
      sparse = raw.view(np.int32)
  return jax.device_put({**batch, "sparse": sparse}, batch_shardings(mesh))


def random_bag_batch(rng: np.random.Generator, specs, batch_size: int, mesh):
  """Full bags of uniformly random ids: sparse i32[B, sum(bag sizes)] (sharding/bags.py)."""
  batch = jax.device_get(random_batch(rng, specs, batch_size, mesh))
  batch["sparse"] = np.concatenate(
    [rng.integers(0, s.rows, (batch_size, s.bag_size)) for s in specs], axis=1
  ).astype(np.int32)
  return jax.device_put(batch, batch_shardings(mesh))


def multi_hot_report(specs, bottom, top, one_hot: dict[int, tuple[float, float]]) -> None:
  """Measures ``specs`` with the bags of --multi_hot_sizes against ``one_hot`` figures."""
  sizes = [int(v) for v in FLAGS.multi_hot_sizes]
  if len(sizes) == 1:
    sizes = sizes * len(specs)
  mesh = make_mesh()
  specs = [dataclasses.replace(s, bag_size=n) for s, n in zip(specs, sizes, strict=True)]
  step, state = reference_step(specs, mesh, FLAGS.optimizer, bottom=bottom, top=top)
  rng = np.random.default_rng(1)
  ids = sum(sizes)
  print(f"multi-hot: {ids} ids per sample (sizes {','.join(map(str, sizes))}), sum pooling")
  print(
    f"{'batch':>6} {'samples/s':>10} {'ids/s':>12} {'one-hot samples/s':>18} "
    f"{'ratio':>6} {'ratio/matmul':>13}"
  )
  for batch_size in map(int, FLAGS.batch_sizes):
    batches = [random_bag_batch(rng, specs, batch_size, mesh) for _ in range(8)]
    _, state = timed_window(step, state, batches, 1)  # compile
    rates, matmuls = [], []
    for _ in range(FLAGS.windows):
      seconds, state = timed_window(step, state, batches, FLAGS.steps)
      rates.append(FLAGS.steps * batch_size / seconds)
      matmuls.append(matmul_gflops(reps=10))
    rate, mm = statistics.median(rates), statistics.median(matmuls)
    base, base_mm = one_hot[batch_size]
    print(
      f"{batch_size:>6} {rate:>10,.0f} {rate * ids:>12,.0f} {base:>18,.0f} "
      f"{rate / base:>6.2f} {(rate / mm) / (base / base_mm):>13.2f}"
    )


def reference_models(
  specs, mesh, optimizer: str = "sgd", *, bottom, top, compute_dtypes, managed: bool = False
):
  """The reference architecture over ``specs`` in each dtype: ({dtype: step_for}, state).

  ``step_for(K)`` is the jitted train step taking K stacked batches per call
  (``stack_batches``; one plain batch for K = 1). Parameters are f32 in every
  dtype, so all the steps take (and donate) the one state. ``managed``: as
  --id_mapping=managed, every table row-wise with its map, capacity = the rows of
  ``specs`` (each table one row more: the unknown row), the step maps raw ids.
  """
  dim = specs[0].dim
  sparse_opt = SparseOptimizer(optimizer, 0.1)
  slot_floats = sparse_opt.slot_floats_per_row(dim)
  ml = None
  if managed:
    specs = [dataclasses.replace(s, rows=s.rows + 1) for s in specs]
    slot_floats += MANAGED_FLOATS_PER_ROW  # the planner charges the maps too
    layout = plan_layout(specs, model_size(mesh), default="row", slot_floats_per_row=slot_floats)
    ml = managed_layout(layout)
  else:
    layout = plan_layout(specs, model_size(mesh), slot_floats_per_row=slot_floats)
  models = {d: DenseModel(bottom, top, "dot", dtype=jnp.dtype(d)) for d in compute_dtypes}
  tx = dense_optimizer(optimizer, 0.1)
  first = models[compute_dtypes[0]]
  state = create_train_state(first, layout, sparse_opt, tx, mesh, jax.random.key(0), managed=ml)
  jax.block_until_ready(state)
  abstract = jax.eval_shape(lambda s: s, state)
  steps = {
    d: functools.partial(make_train_step, m, layout, sparse_opt, tx, mesh, abstract, managed=ml)
    for d, m in models.items()
  }
  return steps, state


def reference_model(specs, mesh, optimizer: str = "sgd", *, bottom, top, compute_dtype="float32"):
  """The reference architecture over ``specs``: (step_for, initial state); see reference_models."""
  steps, state = reference_models(
    specs, mesh, optimizer, bottom=bottom, top=top, compute_dtypes=(compute_dtype,)
  )
  return steps[compute_dtype], state


def reference_step(specs, mesh, optimizer: str = "sgd", *, bottom=BOTTOM, top=TOP):
  """The reference architecture's one-step-per-call train step and initial state."""
  step_for, state = reference_model(specs, mesh, optimizer, bottom=bottom, top=top)
  return step_for(1), state


def stack_batches(batches, k: int, mesh) -> list[dict[str, jax.Array]]:
  """Groups of ``k`` consecutive device batches (cycling) as stacked [k, B, ...] batches."""
  shardings = batch_shardings(mesh, stacked=True)
  out = []
  for g in range(len(batches)):
    group = [batches[(g * k + i) % len(batches)] for i in range(k)]
    out.append(
      jax.device_put({key: jnp.stack([b[key] for b in group]) for key in group[0]}, shardings)
    )
  return out


def timed_window(step, state, batches, steps: int):
  """Runs ``steps`` calls of ``step`` cycling through ``batches``: (seconds, state)."""
  t = time.perf_counter()
  for i in range(steps):
    state, out = step(state, batches[i % len(batches)])
  out["loss"].block_until_ready()
  return time.perf_counter() - t, state


def _mappings() -> list[str]:
  mappings = list(dict.fromkeys(FLAGS.id_mapping))  # in order, once each
  bad = [m for m in mappings if m not in MAPPINGS]
  if bad or not mappings:
    raise app.UsageError(
      f"--id_mapping={','.join(FLAGS.id_mapping)}: each must be one of {', '.join(MAPPINGS)}"
    )
  if FLAGS.multi_hot_sizes and mappings != ["vocabulary"]:
    raise app.UsageError("--multi_hot_sizes: bags are vocabulary ids; use --id_mapping=vocabulary")
  return mappings


def main(argv):
  del argv
  sizes, dim, bottom, top = MODELS[FLAGS.model]
  dim = FLAGS.embedding_dim or dim
  if FLAGS.max_table_rows:
    sizes = [min(s, FLAGS.max_table_rows) for s in sizes]
  if FLAGS.steps_per_call < 0:
    raise app.UsageError(f"--steps_per_call={FLAGS.steps_per_call}: must be >= 1, or 0 for auto")
  mappings = _mappings()
  both = FLAGS.compute_dtype == "both"
  dtypes = ("bfloat16", "float32") if both else (FLAGS.compute_dtype,)
  mesh = make_mesh()
  specs = table_specs(list(SPARSE_NAMES), list(sizes), dim)
  t0 = time.perf_counter()
  # vocabulary and hash run the same step on ids in [0, rows) (hash's are taken % rows on the
  # host), so they share one model; managed has its own (its maps, row-wise tables).
  groups = {m: "managed" if m == "managed" else "plain" for m in mappings}
  models = {
    g: reference_models(
      specs,
      mesh,
      FLAGS.optimizer,
      bottom=bottom,
      top=top,
      compute_dtypes=dtypes,
      managed=g == "managed",
    )
    for g in dict.fromkeys(groups.values())
  }
  states = {g: state for g, (_, state) in models.items()}
  init_s = time.perf_counter() - t0
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(states))
  flops = model_flops_per_sample(dim, len(specs), bottom, top)
  print(
    f"devices: {jax.device_count()} x {jax.devices()[0].platform}; tables: {len(specs)} "
    f"{FLAGS.model} sizes, {sum(s.rows for s in specs):,} rows, dim {dim}; bottom "
    f"{'-'.join(map(str, bottom))}, top {'-'.join(map(str, top))}; optimizer "
    f"{FLAGS.optimizer}; {' and '.join(dtypes)} dots; ids: {', '.join(mappings)}"
  )
  print(
    f"state: {state_bytes / 2**30:.2f} GiB (tables + optimizer state + dense params"
    f"{' + maps' if 'managed' in states else ''}, every model); initialised in {init_s:.1f} s; "
    f"model {flops / 1e6:.2f} MFLOP/sample (fwd+bwd)"
  )
  if "managed" in states and FLAGS.fresh_ids:
    print("managed: every timed step draws new random ids, so most are inserted (none evicted)")
  elif "managed" in states:
    print(
      "managed: the ids of the 8 cycled batches are inserted in the first calls (the compile "
      "call and the first window); later calls find them all (nothing is evicted)"
    )
  rng = np.random.default_rng(0)
  variants = [(m, d) for m in mappings for d in dtypes]
  rows, speedups, versus = [], {}, {}
  for batch_size in map(int, FLAGS.batch_sizes):
    k = FLAGS.steps_per_call or auto_steps_per_call(batch_size)
    steps = -(-FLAGS.steps // k) * k  # whole calls
    step = {(m, d): models[groups[m]][0][d](k) for m, d in variants}
    # --fresh_ids: one set of batches per timed window and variant, each step's ids new.
    sets = FLAGS.windows * len(variants) + 1 if FLAGS.fresh_ids else 1
    per_set = steps if FLAGS.fresh_ids else 8
    batches = {m: [] for m in mappings}
    for _ in range(sets):
      host = [host_batch(rng, specs, batch_size) for _ in range(per_set)]
      for m in mappings:
        mapped = [mapped_batch(b, specs, m, mesh) for b in host]
        batches[m].append(stack_batches(mapped, k, mesh) if k > 1 else mapped)
    for m, d in variants:
      _, states[groups[m]] = timed_window(step[m, d], states[groups[m]], batches[m][0], 1)
    # Each window takes the next set (the compile calls used set 0), or set 0 again.
    sources = {
      m: iter(batches[m][1:]) if FLAGS.fresh_ids else itertools.repeat(batches[m][0])
      for m in mappings
    }
    # Step windows (of each variant) alternate with matmul windows so all see
    # the same machine load; ratios are medians of per-window ratios.
    rates = {v: [] for v in variants}
    matmuls = {form: [] for form in MATMULS}
    for _ in range(FLAGS.windows):
      for m, d in variants:
        g = groups[m]
        seconds, states[g] = timed_window(step[m, d], states[g], next(sources[m]), steps // k)
        rates[m, d].append(steps * batch_size / seconds)
      for form in MATMULS:
        matmuls[form].append(matmul_gflops(reps=10, form=form))
    fastest = [max(w) for w in zip(*matmuls.values(), strict=True)]
    for m, d in variants:
      gflops = [r * flops / 1e9 for r in rates[m, d]]
      own = matmuls[OWN_MATMUL[d]]
      rows.append(
        (
          batch_size,
          statistics.median(rates[m, d]),
          statistics.median(gflops),
          statistics.median(fastest),
          statistics.median([g / mm for g, mm in zip(gflops, fastest, strict=True)]),
          k,
          d,
          statistics.median([g / mm for g, mm in zip(gflops, own, strict=True)]),
          *(statistics.median(matmuls[form]) for form in MATMULS),
          m,
        )
      )
    if both:
      for m in mappings:
        ratios = [b / f for b, f in zip(rates[m, "bfloat16"], rates[m, "float32"], strict=True)]
        speedups[batch_size, m] = statistics.median(ratios)
    if "vocabulary" in mappings:
      for m, d in variants:
        if m != "vocabulary":
          ratios = [a / b for a, b in zip(rates[m, d], rates["vocabulary", d], strict=True)]
          versus[batch_size, m, d] = statistics.median(ratios)
  rss = peak_rss_bytes()
  # Columns 1-5 keep their places: ../shared/peers/peer_throughput.sh reads them.
  # ratio: to the fastest matmul; own: to the matmul of the step's own dtype.
  print(
    f"{'batch':>6} {'samples/s':>10} {'model GFLOP/s':>14} {'matmul GFLOP/s':>15} {'ratio':>6} "
    f"{'steps/call':>10} {'dtype':>9} {'own':>5} "
    + " ".join(f"{form + ' GFLOP/s':>18}" for form in MATMULS)
    + f" {'ids':>10}"
  )
  for batch_size, rate, model_gflops, mm, ratio, k, d, own, *forms, m in rows:
    print(
      f"{batch_size:>6} {rate:>10,.0f} {model_gflops:>14.1f} {mm:>15.1f} {ratio:>6.2f} {k:>10} "
      f"{d:>9} {own:>5.2f} " + " ".join(f"{g:>18.1f}" for g in forms) + f" {m:>10}"
    )
  for (batch_size, m), speedup in speedups.items():
    print(
      f"bfloat16 / float32 samples/s at batch {batch_size}"
      f"{f' ({m} ids)' if len(mappings) > 1 else ''}: {speedup:.2f} (median of windows)"
    )
  for (batch_size, m, d), ratio in versus.items():
    print(
      f"{m} / vocabulary samples/s at batch {batch_size} ({d}): {ratio:.2f} "
      f"(median of per-window ratios)"
    )
  print(
    f"peak RSS {rss / 2**30:.2f} GiB = {rss / state_bytes:.2f} x state "
    f"({state_bytes / 2**30:.2f} GiB)"
  )
  if FLAGS.multi_hot_sizes:
    del step, states  # one model's tables in memory at a time
    multi_hot_report(specs, bottom, top, {r[0]: (r[1], r[8]) for r in rows if r[6] == dtypes[0]})


if __name__ == "__main__":
  app.run(main)
