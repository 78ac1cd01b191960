"""Peak memory of one checkpoint save of the Criteo-Kaggle-size model (33.8M rows, dim 16).

python benchmarks/checkpoint_memory.py [--devices=8] [--optimizer=sgd] [--sharding=auto]

Saves the same state twice in one process, into a temporary directory:

* ``now``: what training does (checkpointing.make_snapshot): Orbax writes each
  device's shard of the fused buffers as it lies, with the layout as metadata;
* ``before``: the previous format 1, a jitted copy of every table and slot
  cut out into logical per-table arrays (table_io.extract_all), then saved.

For each it prints the bytes of live jax arrays on the devices (sampled every
few milliseconds during the save, above the training state), the compiled
snapshot's temporary bytes, and the process's peak RSS above its RSS before the
save (on CPU the devices' memory is the host's, so RSS counts both).
"""

from __future__ import annotations

import os
import sys

# Fake CPU devices must be requested before jax is imported.
_devices = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "8")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_devices}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import flax.serialization  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from dlrm_jax.checkpoint import manager as checkpointing  # noqa: E402
from dlrm_jax.checkpoint import table_io  # noqa: E402
from dlrm_jax.data.criteo_format import KAGGLE_TABLE_SIZES, SPARSE_NAMES  # noqa: E402
from dlrm_jax.model.dlrm import DenseModel  # noqa: E402
from dlrm_jax.optim.sparse import SparseOptimizer  # noqa: E402
from dlrm_jax.sharding.mesh import make_mesh, model_size  # noqa: E402
from dlrm_jax.sharding.planner import format_bytes, plan_layout  # noqa: E402
from dlrm_jax.sharding.specs import table_specs  # noqa: E402
from dlrm_jax.train.state import create_train_state, dense_optimizer  # noqa: E402

flags.DEFINE_integer("devices", 8, "Fake CPU devices (read before jax starts).")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adagrad", "rowwise_adagrad"], "Table optimizer.")
flags.DEFINE_string("sharding", "auto", "Plan for every table: auto, table, row, column.")
flags.DEFINE_integer("embedding_dim", 16, "Embedding width.")
FLAGS = flags.FLAGS

BOTTOM, TOP = (512, 256, 64, 16), (512, 256, 1)


def device_bytes() -> int:
  """Bytes of the distinct device buffers behind every live jax array.

  Views of one buffer (a shard's ``.data``, as Orbax takes them) count once;
  replicas count on each device.
  """
  seen = {}
  for x in jax.live_arrays():
    try:
      for s in x.addressable_shards:
        seen[(s.device.id, s.data.unsafe_buffer_pointer())] = s.data.nbytes
    except Exception:  # deleted while we looked
      pass
  return sum(seen.values())


def rss_bytes(field: str = "VmRSS") -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(field)


def reset_peak_rss() -> None:
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


class Sampler:
  """Samples device_bytes() every few milliseconds in a thread; keeps the maximum."""

  def __init__(self):
    self.peak, self._stop = 0, threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, device_bytes())
      time.sleep(0.002)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, device_bytes())


def old_snapshot(layout, abstract, mesh):
  """Format 1's snapshot: a copy of everything, tables cut out into logical arrays."""
  m = layout.model_size
  rep = NamedSharding(mesh, P())

  def spec(x):  # format 1 spread each logical table over the model axis
    return NamedSharding(mesh, table_io.logical_spec(x.shape, m)) if x.ndim else rep

  def snap(state):
    return {
      "step": jnp.copy(state.step),
      "params": jax.tree.map(jnp.copy, state.params),
      "opt_state": flax.serialization.to_state_dict(jax.tree.map(jnp.copy, state.opt_state)),
      **table_io.extract_all(layout, state.tables, state.slots),
    }

  out = jax.eval_shape(snap, abstract)
  shardings = jax.tree.map(spec, out)
  shardings["params"] = jax.tree.map(lambda _: rep, out["params"])
  shardings["opt_state"] = jax.tree.map(lambda _: rep, out["opt_state"])
  return jax.jit(snap, out_shardings=shardings)


def measure(name, snapshot, state, meta, root, state_dev):
  work = os.path.join(root, name)
  store = checkpointing.CheckpointStore(work, keep=1)
  before = rss_bytes()
  reset_peak_rss()
  t = time.perf_counter()
  with Sampler() as sampler:
    tree = snapshot(state)
    jax.block_until_ready(tree)
    store.save(1, tree, meta)
    blocking = time.perf_counter() - t
    del tree
    store.wait()
  total = time.perf_counter() - t
  store.close()
  peak = rss_bytes("VmHWM")
  shutil.rmtree(work)
  print(
    f"{name:>7} {format_bytes(sampler.peak - state_dev):>16} {format_bytes(peak - before):>14} "
    f"{blocking:>10.1f} {total:>8.1f}"
  )


def main(argv):
  del argv
  mesh = make_mesh()
  specs = table_specs(list(SPARSE_NAMES), list(KAGGLE_TABLE_SIZES), FLAGS.embedding_dim)
  sparse_opt = SparseOptimizer(FLAGS.optimizer, 0.1)
  slot_floats = sparse_opt.slot_floats_per_row(FLAGS.embedding_dim)
  layout = plan_layout(
    specs, model_size(mesh), default=FLAGS.sharding, slot_floats_per_row=slot_floats
  )
  model = DenseModel(BOTTOM, TOP, "dot")
  tx = dense_optimizer(FLAGS.optimizer, 0.1)
  state = create_train_state(model, layout, sparse_opt, tx, mesh, jax.random.key(0))
  jax.block_until_ready(state)
  abstract = jax.eval_shape(lambda s: s, state)
  state_dev = device_bytes()
  plans = sorted({p.plan for p in layout.placements})
  print(
    f"devices: {jax.device_count()} x {jax.devices()[0].platform}; "
    f"{sum(KAGGLE_TABLE_SIZES):,} rows, "
    f"dim {FLAGS.embedding_dim}, {FLAGS.optimizer}; plans {','.join(plans)}; state on devices "
    f"{format_bytes(state_dev)} (all devices together), process RSS {format_bytes(rss_bytes())}"
  )
  new = checkpointing.make_snapshot(layout, abstract, mesh, 0)
  old = old_snapshot(layout, abstract, mesh)
  temp = old.lower(abstract).compile().memory_analysis()
  print(
    f"format 1 snapshot, per device: compiled temporaries "
    f"{format_bytes(temp.temp_size_in_bytes)}, outputs {format_bytes(temp.output_size_in_bytes)}"
  )
  meta = {
    "format": checkpointing.FORMAT,
    "step": 1,
    "finite": True,
    "layout": checkpointing.layout_meta(layout, abstract),
  }
  root = tempfile.mkdtemp(prefix="checkpoint_memory_")
  try:
    print(
      f"{'save':>7} {'device bytes +':>16} {'peak RSS +':>14} {'blocking s':>10} {'total s':>8}"
    )
    measure("now", lambda s: new(s)[0], state, meta, root, state_dev)
    measure("before", old, state, meta, root, state_dev)
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
