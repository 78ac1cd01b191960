"""Where a train step's time goes: a jax.profiler trace of the real step, op by op.

python benchmarks/step_profile.py [--batch_sizes=128,2048] [--steps=32] [--steps_per_call=0]
    [--compute_dtype=float32|bfloat16]

On one device, for each batch size: the Kaggle-size train step (as
benchmarks/train_throughput.py builds it, K steps per call as training picks
them) is traced for ``--steps`` steps with XLA:CPU's per-op trace events on.
Each XLA op is put in a phase by the JAX name scope it came from (the compiled
HLO's op_name metadata): embedding lookup, bottom MLP, interaction and top MLP
forward and backward, dense optimizer, sparse update (gradient routing and the
table scatter), and the rest (loss, metrics, copies). "host and dispatch" is
the wall time per step minus the ops' time: time the devices' threads ran no op.
Ops of one step may run side by side on the 2 cores, so shares are of the ops'
sum, which can exceed the wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

# Per-op trace events need this XLA flag before jax starts.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from train_throughput import BOTTOM, TOP, random_batch, reference_model, stack_batches  # noqa: E402

from dlrm_jax.config import auto_steps_per_call  # noqa: E402
from dlrm_jax.data.criteo_format import KAGGLE_TABLE_SIZES, SPARSE_NAMES  # noqa: E402
from dlrm_jax.sharding.mesh import make_mesh  # noqa: E402
from dlrm_jax.sharding.specs import table_specs  # noqa: E402

# --batch_sizes, --steps (per window), --steps_per_call and --compute_dtype are
# train_throughput's flags.
FLAGS = flags.FLAGS

PHASES = (
  "embedding lookup",
  "bottom MLP forward",
  "interaction forward",
  "top MLP forward",
  "top MLP backward",
  "interaction backward",
  "bottom MLP backward",
  "dense optimizer",
  "sparse update",
  "loss, metrics, copies",
)


def phase_of(op_name: str) -> str:
  """The phase of an XLA op from its JAX op_name (name scopes and transforms)."""
  if "embedding_lookup" in op_name:
    return "embedding lookup"
  if "embedding_update" in op_name:
    return "sparse update"
  if "dense_update" in op_name:
    return "dense optimizer"
  backward = "transpose(" in op_name
  for part, label in (("bottom_mlp", "bottom MLP"), ("interaction", "interaction")):
    if part in op_name:
      return f"{label} {'backward' if backward else 'forward'}"
  if "top_mlp" in op_name:
    return f"top MLP {'backward' if backward else 'forward'}"
  return "loss, metrics, copies"


def op_phases(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> phase, from each instruction's op_name metadata.

  Instructions without it (copies XLA inserted) count as "loss, metrics,
  copies"; loops are left out, their bodies' ops are traced one by one.
  """
  phases = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if not m or m.group(1).startswith(("while", "call", "conditional")):
      continue
    op_name = re.search(r'op_name="([^"]*)"', line)
    phases[m.group(1)] = phase_of(op_name.group(1) if op_name else "")
  return phases


def traced_op_seconds(trace_dir: str) -> dict[str, float]:
  """Total seconds per XLA op name in the newest perfetto trace under ``trace_dir``."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for e in events:
    if e.get("ph") == "X":
      totals[e["name"]] += e.get("dur", 0) * 1e-6
  return totals


def profile(batch_size: int, step_for, state, specs, mesh, rng):
  """(wall seconds per step, {phase: op seconds per step}, K, state)."""
  k = FLAGS.steps_per_call or auto_steps_per_call(batch_size)
  calls = -(-FLAGS.steps // k)
  step = step_for(k)
  batches = [random_batch(rng, specs, batch_size, mesh) for _ in range(8)]
  if k > 1:
    batches = stack_batches(batches, k, mesh)
  phases = op_phases(step.lower(state, batches[0]).compile().as_text())
  for i in range(3):  # compile and warm up
    state, out = step(state, batches[i % len(batches)])
  out["loss"].block_until_ready()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    t = time.perf_counter()
    for i in range(calls):
      state, out = step(state, batches[i % len(batches)])
    out["loss"].block_until_ready()
    wall = (time.perf_counter() - t) / (calls * k)
    jax.profiler.stop_trace()
    totals = traced_op_seconds(trace_dir)
  per_phase = collections.Counter()
  for name, seconds in totals.items():
    if name in phases:
      per_phase[phases[name]] += seconds / (calls * k)
  return wall, per_phase, k, state


def main(argv):
  del argv
  mesh = make_mesh()
  if jax.device_count() != 1:
    raise SystemExit("step_profile needs one device: unset xla_force_host_platform_device_count")
  specs = table_specs(list(SPARSE_NAMES), list(KAGGLE_TABLE_SIZES), 16)
  if FLAGS.compute_dtype == "both":
    raise SystemExit("step_profile traces one dtype: --compute_dtype=float32 or bfloat16")
  step_for, state = reference_model(
    specs, mesh, bottom=BOTTOM, top=TOP, compute_dtype=FLAGS.compute_dtype
  )
  rng = np.random.default_rng(0)
  results = []
  for batch_size in map(int, FLAGS.batch_sizes):
    wall, per_phase, k, state = profile(batch_size, step_for, state, specs, mesh, rng)
    results.append((batch_size, wall, per_phase, k))
  header = "| phase |" + "".join(f" batch {b} (K={k}) | share |" for b, _, _, k in results)
  print(header)
  print("|---|" + "---:|---:|" * len(results))
  for phase in PHASES:
    cells = "".join(
      f" {p[phase] * 1e3:.3f} ms | {p[phase] / sum(p.values()):.0%} |" for _, _, p, _ in results
    )
    print(f"| {phase} |{cells}")
  print("| ops' sum |" + "".join(f" {sum(p.values()) * 1e3:.3f} ms | |" for _, _, p, _ in results))
  print(
    "| host and dispatch (wall - ops) |"
    + "".join(f" {(w - sum(p.values())) * 1e3:.3f} ms | |" for _, w, p, _ in results)
  )
  print("| step, wall |" + "".join(f" {w * 1e3:.3f} ms | |" for _, w, _, _ in results))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
