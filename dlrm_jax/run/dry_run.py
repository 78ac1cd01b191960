"""--dry_run: whether a run fits its devices, from the compiler, without data or the devices."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any

import jax

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import raw_ids, store
from dlrm_jax.data.datasets import model_table_sizes, processed_dir
from dlrm_jax.run import memory_plan
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.sharding.planner import format_bytes, plan_table
from dlrm_jax.train.components import (
  Components,
  abstract_train_state,
  build_components,
  row_floats,
)

# XLA:CPU devices are threads of one process; beyond this many, start-up and the
# SPMD partitioner's per-device bookkeeping take longer than a dry run should.
MAX_SIMULATED_DEVICES = 1024
EXIT_OVER = 2


def simulated_devices(config: Config) -> tuple[list[jax.Device], str]:
  """The devices --mesh_shape names: real ones if present, else that many XLA:CPU devices.

  Must run before JAX starts its backends (the CPU device count is fixed then).
  """
  shape = config.mesh_shape
  flag = f"--mesh_shape={','.join(map(str, shape))}"
  if not shape:
    devices = jax.devices()
    return devices, f"{len(devices)} {devices[0].platform} device(s) of this host"
  n = math.prod(shape)
  if n > MAX_SIMULATED_DEVICES:
    raise ConfigError(
      f"{flag} needs {n} devices; a dry run simulates at most {MAX_SIMULATED_DEVICES} "
      f"(XLA:CPU devices of this host): give a smaller --mesh_shape"
    )
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    pass  # JAX already started in this process (a notebook); its devices may still do
  real = jax.devices()
  if len(real) >= n and real[0].platform != "cpu":
    return real[:n], f"{n} {real[0].platform} devices of this host"
  cpus = jax.devices("cpu")
  if len(cpus) < n:
    raise ConfigError(
      f"{flag} needs {n} devices, but JAX already started in this process with "
      f"{len(cpus)} CPU device(s) (the count is fixed at start-up): run the dry run in a "
      f"new process (python main.py ... --dry_run)"
    )
  if n == 1:
    return cpus[:1], "1 XLA:CPU device (no accelerator on this host)"
  return cpus[:n], f"{n} simulated XLA:CPU devices (no {n} accelerators on this host)"


def table_sizes(config: Config) -> tuple[list[int], list[str], str]:
  """(rows per table, names, where they come from): the data's, else the published sizes."""
  names = list(cf.SPARSE_NAMES)
  if config.raw_ids:
    return _raw_table_sizes(config, names)
  if config.dataset != "synthetic":
    path = processed_dir(config)
    if os.path.exists(os.path.join(path, store.METADATA_FILE)):
      meta = store.read_metadata(path)
      return list(meta["table_sizes"]), list(meta["sparse_names"]), f"from {path}"
  m = config.max_ind_range
  if config.dataset == "kaggle":
    sizes = [min(s, m) if m else s for s in cf.KAGGLE_TABLE_SIZES]
    how = "capped at --max_ind_range: upper bounds" if m else "distinct values over all 7 days"
    return sizes, names, f"Criteo Kaggle's published sizes (the reference's; {how}); no data read"
  if config.dataset == "terabyte":
    top = cf.TERABYTE_MAX_IND_RANGE
    if m == top:
      return (
        list(cf.TERABYTE_TABLE_SIZES),
        names,
        f"Criteo Terabyte's published sizes at --max_ind_range={top} (the reference's and "
        f"MLPerf's); no data read",
      )
    if m and top % m == 0:
      # ids % m is a function of ids % 40M: no table can have more rows than either.
      return (
        [min(s, m) for s in cf.TERABYTE_TABLE_SIZES],
        names,
        f"Criteo Terabyte's published sizes at --max_ind_range={top}, capped at "
        f"--max_ind_range={m} (upper bounds); no data read",
      )
    raise ConfigError(
      f"--max_ind_range={m}: Criteo Terabyte's table sizes are published only for "
      f"--max_ind_range={top} (and follow for its divisors, e.g. 10000000); without the "
      f"preprocessed data under --data_dir={config.data_dir} a dry run cannot know them"
    )
  raise ConfigError(
    f"--dataset={config.dataset}: its table sizes are known only once the data is generated; "
    f"run it once without --dry_run, or dry-run --dataset=kaggle or terabyte (published sizes)"
  )


def _raw_table_sizes(config: Config, names: list[str]) -> tuple[list[int], list[str], str]:
  """--id_mapping=hash or managed: the rows --hash_rows / --managed_capacity (+ the unknown row)
  / --max_ind_range give, or the data's defaults."""
  hashed = config.id_mapping == "hash"
  flag, overrides = (
    ("--hash_rows", config.hash_rows) if hashed else ("--managed_capacity", config.managed_capacity)
  )
  path = processed_dir(config)
  if config.dataset != "synthetic" and os.path.exists(os.path.join(path, store.METADATA_FILE)):
    return model_table_sizes(config, store.read_metadata(path)), names, f"{flag} ({path})"
  if config.max_ind_range or any(not name for name, _ in overrides):
    try:
      sizes = raw_ids.table_rows(overrides, config.max_ind_range, names, flag)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if not hashed:
      sizes = [n + 1 for n in sizes]  # row 0, the unknown row
    return sizes, names, f"{flag} / --max_ind_range; no data read"
  raise ConfigError(
    f"--id_mapping={config.id_mapping}: the default {'rows' if hashed else 'capacity'} depend"
    f"{'' if hashed else 's'} on the data's training rows; give {flag} (or --max_ind_range) to "
    f"dry-run without the preprocessed data"
  )


def build(config: Config, devices: list[jax.Device]) -> tuple[Components, str | None]:
  """The run's components; if the planner refuses --device_memory_gb, planned without it."""
  mesh = mesh_lib.make_mesh(config.mesh_shape, devices)
  sizes, names, _ = table_sizes(config)
  try:
    return build_components(config, mesh, sizes, names), None
  except ConfigError:
    raise
  except ValueError as e:
    if not config.device_memory_gb:
      raise ConfigError(str(e)) from None
    # Compile anyway: the compiler's figures say by how much it does not fit.
    unlimited = dataclasses.replace(config, device_memory_gb=0.0)
    return build_components(unlimited, mesh, sizes, names), str(e)


def memory_check(
  c: Components, limit: float, programs: dict | None = None
) -> tuple[list[memory_plan.ProgramMemory], str | None, Any]:
  """(every program's figures, the first over ``limit`` GiB as a message or None, compiled init).

  ``limit`` is --device_memory_gb (``c.config`` may have been planned without it,
  ``build``); ``programs``: the run's own (``memory_plan.run_programs``).
  """
  figures, init = memory_plan.compile_programs(c, abstract_train_state(c), programs)
  over = memory_plan.over_limit(figures, int(limit * 2**30)) if limit else []
  if not over:
    return figures, None, init
  p = over[0]
  n = c.mesh.devices.size
  where = "device 0" if n == 1 else f"every device (0-{n - 1}; the same SPMD program)"
  return (
    figures,
    f"program {p.name!r} needs {format_bytes(p.peak)} on {where}, "
    f"{format_bytes(p.peak - limit * 2**30)} over --device_memory_gb={limit:g} "
    f"({', '.join(q.name for q in over)} over in all)",
    init,
  )


def check_before_allocating(c: Components, programs: dict) -> Any:
  """A real run's check (--device_memory_gb set): ConfigError if a program does not fit.

  Compiles ``programs`` (the run's own, which then reuse the executables) and
  the init; returns the compiled init, ``init(key) -> TrainState``.
  """
  _, over, init = memory_check(c, c.config.device_memory_gb, programs)
  if over:
    raise ConfigError(f"{over}; the dry run shows every program: add --dry_run")
  return init


def dry_run(config: Config) -> int:
  """Prints the plan and the per-device memory table; returns 0 if it fits, else EXIT_OVER."""
  devices, where = simulated_devices(config)
  config.validate(len(devices))
  _, _, source = table_sizes(config)
  c, refused = build(config, devices)
  slot_floats = row_floats(config, c.sparse_opt)
  print(f"dry run: mesh {dict(c.mesh.shape)} on {where}")
  print(f"tables: {source}")
  print(plan_table(c.layout, slot_floats))
  programs, over, _ = memory_check(c, config.device_memory_gb)
  state = memory_plan.state_breakdown(memory_plan.abstract_state(c, abstract_train_state(c)))
  planner = c.layout.shard_bytes(slot_floats)[0]
  print(memory_plan.table_text(programs, state, planner, len(devices)))
  if devices[0].platform == "cpu":
    print("(figures from XLA:CPU's buffer assignment; a GPU's temporaries differ somewhat)")
  limit = config.device_memory_gb
  if refused:
    print(f"error: the planner refuses --device_memory_gb={limit:g}: {refused}", file=sys.stderr)
  if over:
    print(f"error: does not fit: {over}", file=sys.stderr)
  if refused or over:
    return EXIT_OVER
  peak = max(p.peak for p in programs)
  if limit:
    print(
      f"fits: peak {format_bytes(peak)} per device within --device_memory_gb={limit:g} "
      f"({format_bytes(limit * 2**30 - peak)} to spare)"
    )
  else:
    print(f"fits: peak {format_bytes(peak)} per device (no --device_memory_gb to check against)")
  return 0
