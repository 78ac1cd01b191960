"""Sharding plans for embedding tables, the planner, and the resulting layout.

Tables are stored in at most three fused buffers, so that one collective serves
many tables:

* ``sharded``: ``[model * R, dim]`` split by rows over the model axis. Each model
  shard's block of R rows holds whole tables (table-wise plan) and one contiguous
  chunk of every row-wise table.
* ``column``: ``[rows, dim]`` split by columns over the model axis (column-wise).
* ``replicated``: ``[rows, dim]`` on every device.

A table's id maps to a buffer row by static arithmetic (``TablePlacement``), so
lookups never consult a host-side index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from jax.sharding import PartitionSpec as P

from dlrm_jax.sharding.mesh import MODEL_AXIS
from dlrm_jax.sharding.specs import TableSpec

PLANS = ("table", "row", "column", "replicated")
BUFFER_OF_PLAN = {
  "table": "sharded",
  "row": "sharded",
  "column": "column",
  "replicated": "replicated",
}
BUFFER_SPECS = {
  "sharded": P(MODEL_AXIS, None),
  "column": P(None, MODEL_AXIS),
  "replicated": P(None, None),
}


@dataclasses.dataclass(frozen=True)
class TablePlacement:
  """Where one table's rows live.

  Buffer row of id ``i``:
    table-wise: ``owner * R + offset + i``;
    row-wise:   ``(i // chunk) * R + offset + i % chunk``;
    column-wise / replicated: ``offset + i``.
  """

  spec: TableSpec
  plan: str
  offset: int
  owner: int = 0  # table-wise: the model shard that holds the table
  chunk: int = 0  # row-wise: rows per model shard
  slot: int = 0  # table-wise: position among the owner's tables

  @property
  def buffer(self) -> str:
    return BUFFER_OF_PLAN[self.plan]


@dataclasses.dataclass(frozen=True)
class EmbeddingLayout:
  """The placement of every table on a mesh with ``model_size`` model shards."""

  placements: tuple[TablePlacement, ...]
  model_size: int
  dim: int
  rows_per_shard: int  # R: rows of the sharded buffer on each model shard
  column_rows: int
  replicated_rows: int
  table_slots: int  # most table-wise tables on one shard

  def features(self, plan: str) -> tuple[int, ...]:
    """Indices (into the feature order) of the tables with ``plan``."""
    return tuple(i for i, p in enumerate(self.placements) if p.plan == plan)

  def buffer_shapes(self) -> dict[str, tuple[int, int]]:
    shapes = {
      "sharded": (self.model_size * self.rows_per_shard, self.dim),
      "column": (self.column_rows, self.dim),
      "replicated": (self.replicated_rows, self.dim),
    }
    return {k: v for k, v in shapes.items() if v[0] > 0}

  def shard_bytes(self, slot_floats_per_row: int = 0) -> list[int]:
    """Bytes of tables (+ optimizer slots) that each model shard allocates."""
    per_row = 4 * (self.dim + slot_floats_per_row)
    col_row = 4 * (
      self.dim // self.model_size + _column_slot(slot_floats_per_row, self.dim, self.model_size)
    )
    return [
      self.rows_per_shard * per_row + self.column_rows * col_row + self.replicated_rows * per_row
    ] * self.model_size

  def table_bytes_per_device(self, index: int, slot_floats_per_row: int = 0) -> list[int]:
    """Bytes of table ``index`` (+ slots) on each model shard."""
    p = self.placements[index]
    m = self.model_size
    row_bytes = 4 * (p.spec.dim + slot_floats_per_row)
    if p.plan == "table":
      return [p.spec.rows * row_bytes if k == p.owner else 0 for k in range(m)]
    if p.plan == "row":
      return [min(p.chunk, max(0, p.spec.rows - k * p.chunk)) * row_bytes for k in range(m)]
    if p.plan == "column":
      return [
        p.spec.rows * 4 * (p.spec.dim // m + _column_slot(slot_floats_per_row, p.spec.dim, m))
      ] * m
    return [p.spec.rows * row_bytes] * m


def _column_slot(slot_floats_per_row: int, dim: int, model_size: int) -> int:
  # Adagrad's accumulator is table-shaped and split by columns with it; the
  # row-wise accumulator (one float per row) is kept whole on every shard.
  return slot_floats_per_row // model_size if slot_floats_per_row == dim else slot_floats_per_row


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _row_bytes(spec: TableSpec, slot_floats_per_row: int) -> int:
  return 4 * (spec.dim + slot_floats_per_row)


class _Loads:
  """Per-model-shard bytes (tables + optimizer slots) and lookups per example.

  Table-wise tables go to the shard whose load, normalised by the even share
  of bytes and of lookups, is least after adding the table: balancing bytes
  bounds the largest per-device memory, balancing lookups bounds the table
  slots per shard, which sizes the table-wise all_to_all.
  """

  def __init__(self, model_size: int, byte_share: float, lookup_share: float):
    self.bytes = [0] * model_size
    self.lookups = [0.0] * model_size
    self.count = [0] * model_size
    self._byte_share = max(byte_share, 1.0)
    self._lookup_share = max(lookup_share, 1e-9)

  def best_owner(self, nbytes: int, lookups: float) -> int:
    def score(k: int) -> tuple[float, int, int]:
      return (
        (self.bytes[k] + nbytes) / self._byte_share
        + (self.lookups[k] + lookups) / self._lookup_share,
        self.count[k],
        k,
      )

    return min(range(len(self.bytes)), key=score)

  def add_table(self, owner: int, nbytes: int, lookups: float) -> None:
    self.bytes[owner] += nbytes
    self.lookups[owner] += lookups
    self.count[owner] += 1

  def add_everywhere(self, nbytes: int, lookups: float) -> None:
    for k in range(len(self.bytes)):
      self.bytes[k] += nbytes
      self.lookups[k] += lookups


def _spread_bytes(spec: TableSpec, plan: str, model_size: int, slot_floats_per_row: int) -> int:
  """Bytes per shard of a table whose plan puts a share of it on every shard."""
  if plan == "row":
    return _ceil_div(spec.rows, model_size) * _row_bytes(spec, slot_floats_per_row)
  if plan == "column":
    return (
      spec.rows
      * 4
      * (spec.dim // model_size + _column_slot(slot_floats_per_row, spec.dim, model_size))
    )
  return spec.rows * _row_bytes(spec, slot_floats_per_row)


def _split_plan(
  spec: TableSpec,
  model_size: int,
  min_column_floats: int,
  slot_floats_per_row: int,
  memory_slack: float,
) -> str:
  # min_column_floats lets accelerators that gather narrow rows slowly keep
  # wide pieces. Row-wise Adagrad's per-row accumulator is whole on every
  # column shard, which can make columns cost more memory than rows.
  if spec.dim % model_size == 0 and spec.dim // model_size >= min_column_floats:
    column = _spread_bytes(spec, "column", model_size, slot_floats_per_row)
    row = _spread_bytes(spec, "row", model_size, slot_floats_per_row)
    if column <= row * (1 + memory_slack):
      return "column"
  return "row"


def _check_overrides(
  specs: Sequence[TableSpec], default: str, overrides: Mapping[str, str]
) -> None:
  names = {s.name for s in specs}
  for name, plan in overrides.items():
    if name not in names:
      raise ValueError(
        f"--table_sharding names table {name!r}, which does not exist; "
        f"tables are {', '.join(s.name for s in specs)}"
      )
    if plan not in PLANS:
      raise ValueError(f"--table_sharding={name}:{plan}: plan must be one of {', '.join(PLANS)}")
  if default != "auto" and default not in PLANS:
    raise ValueError(f"--sharding={default!r}: must be auto or one of {', '.join(PLANS)}")


def _refuse(need: int, device_memory_bytes: int, what: str) -> ValueError:
  return ValueError(
    f"{what} needs {need / 2**30:.3f} GiB of tables and optimizer state on the fullest "
    f"device but --device_memory_gb allows {device_memory_bytes / 2**30:.3f} GiB; use more "
    f"model shards (--mesh_shape), row-wise sharding (--sharding=row or "
    f"--table_sharding=NAME:row), a smaller --embedding_dim, or --max_ind_range"
  )


def choose_plans(
  specs: Sequence[TableSpec],
  model_size: int,
  *,
  default: str = "auto",
  overrides: Mapping[str, str] | None = None,
  slot_floats_per_row: int = 0,
  device_memory_bytes: int | None = None,
  lookups: Sequence[float] | None = None,
  slack: float = 0.05,
  small_share: float = 0.1,
  min_column_floats: int = 1,
  column_memory_slack: float = 0.25,
) -> list[str]:
  """One plan per table: ``overrides`` first, then ``default`` unless 'auto'.

  'auto' visits the remaining tables largest first. A table stays whole on one
  shard (table-wise: one all_to_all, the paper's scheme) if that keeps the
  fullest shard within ``1 + slack`` of an even share of all bytes (tables +
  optimizer slots), or it is under ``small_share`` of that even share, and it
  fits in ``device_memory_bytes``. Otherwise it is split over every shard:
  by columns when the model axis divides the embedding dim into pieces of at
  least ``min_column_floats`` and that costs at most ``column_memory_slack``
  more memory than rows (column-wise moves each looked-up row once, as
  table-wise does, and reads only its columns: several times fewer bytes,
  see benchmarks/sharding_plan.py), else by rows (row-wise reduce-scatters
  ``model_size`` times the rows the batch needs).
  Either lowers the largest per-device load to about 1 / model_size of the
  table. ``lookups[t]`` is table t's ids per example (default: its bag size,
  1 for one-hot), balanced as the second load: it sizes the gathers and, for
  table-wise tables, the id slots every owner pads to (see bags.py).
  Replicated is never chosen automatically: it costs memory on every device
  and a gradient all-gather over all of them.
  Raises ValueError naming the flags to change when no plan fits.
  """
  overrides = dict(overrides or {})
  _check_overrides(specs, default, overrides)
  lookups = list(lookups) if lookups is not None else [float(s.bag_size) for s in specs]
  plans: list[str | None] = [
    overrides.get(s.name) or (None if default == "auto" else default) for s in specs
  ]
  for s, plan in zip(specs, plans, strict=True):
    if plan == "column" and s.dim % model_size:
      raise ValueError(
        f"table {s.name}: column-wise sharding needs embedding_dim ({s.dim}) "
        f"divisible by the model axis size ({model_size}); "
        f"change --sharding/--table_sharding or --mesh_shape"
      )
  total = sum(s.rows * _row_bytes(s, slot_floats_per_row) for s in specs)
  loads = _Loads(model_size, total / model_size, sum(lookups) / model_size)
  for i, (s, plan) in enumerate(zip(specs, plans, strict=True)):
    if plan in ("row", "column", "replicated"):
      loads.add_everywhere(_spread_bytes(s, plan, model_size, slot_floats_per_row), lookups[i])
  order = sorted(range(len(specs)), key=lambda i: (-specs[i].rows, i))
  for i in order:
    if plans[i] == "table":
      nbytes = specs[i].rows * _row_bytes(specs[i], slot_floats_per_row)
      loads.add_table(loads.best_owner(nbytes, lookups[i]), nbytes, lookups[i])
  limit = device_memory_bytes if device_memory_bytes is not None else float("inf")
  auto = [i for i in order if plans[i] is None]
  remaining = sum(specs[i].rows * _row_bytes(specs[i], slot_floats_per_row) for i in auto)
  for i in auto:
    s = specs[i]
    nbytes = s.rows * _row_bytes(s, slot_floats_per_row)
    # The even share of what is placed plus what is left: forced plans can
    # make it exceed total / model_size, and row-wise choices never change it.
    target = (sum(loads.bytes) + remaining) / model_size * (1 + slack)
    remaining -= nbytes
    owner = loads.best_owner(nbytes, lookups[i])
    whole = loads.bytes[owner] + nbytes
    balanced = whole <= max(target, max(loads.bytes))
    # Splitting a small table saves little memory but multiplies its exchange
    # by the model size (every shard reduce-scatters zeros for it).
    small = nbytes <= small_share * total / model_size
    if model_size == 1 or ((balanced or small) and whole <= limit):
      plans[i] = "table"
      loads.add_table(owner, nbytes, lookups[i])
    else:
      plans[i] = _split_plan(
        s, model_size, min_column_floats, slot_floats_per_row, column_memory_slack
      )
      loads.add_everywhere(_spread_bytes(s, plans[i], model_size, slot_floats_per_row), lookups[i])
  if device_memory_bytes is not None and max(loads.bytes) > device_memory_bytes:
    raise _refuse(max(loads.bytes), device_memory_bytes, "the embedding plan")
  return plans


def build_layout(
  specs: Sequence[TableSpec],
  plans: Sequence[str],
  model_size: int,
  *,
  device_memory_bytes: int | None = None,
  slot_floats_per_row: int = 0,
  lookups: Sequence[float] | None = None,
) -> EmbeddingLayout:
  """Places tables given their plans.

  Table-wise tables go, largest first, to the shard with the least load after
  adding them (bytes and lookups, as ``choose_plans`` simulated, so both agree).
  Raises ValueError naming --device_memory_gb and --mesh_shape if the fullest
  shard would exceed ``device_memory_bytes``.
  """
  if len({s.dim for s in specs}) > 1:
    raise ValueError("all tables must have the same embedding_dim")
  dim = specs[0].dim
  lookups = list(lookups) if lookups is not None else [float(s.bag_size) for s in specs]
  total = sum(s.rows * _row_bytes(s, slot_floats_per_row) for s in specs)
  loads = _Loads(model_size, total / model_size, sum(lookups) / model_size)
  placements: list[TablePlacement | None] = [None] * len(specs)
  offset = 0
  for i, (s, plan) in enumerate(zip(specs, plans, strict=True)):
    if plan == "row":
      chunk = _ceil_div(s.rows, model_size)
      placements[i] = TablePlacement(s, "row", offset=offset, chunk=chunk)
      offset += chunk
    if plan in ("row", "column", "replicated"):
      loads.add_everywhere(_spread_bytes(s, plan, model_size, slot_floats_per_row), lookups[i])
  local_rows = [offset] * model_size
  table_wise = sorted(
    (i for i, p in enumerate(plans) if p == "table"), key=lambda i: (-specs[i].rows, i)
  )
  for i in table_wise:
    nbytes = specs[i].rows * _row_bytes(specs[i], slot_floats_per_row)
    owner = loads.best_owner(nbytes, lookups[i])
    placements[i] = TablePlacement(
      specs[i], "table", offset=local_rows[owner], owner=owner, slot=loads.count[owner]
    )
    loads.add_table(owner, nbytes, lookups[i])
    local_rows[owner] += specs[i].rows
  flat_offsets = {"column": 0, "replicated": 0}
  for i, (s, plan) in enumerate(zip(specs, plans, strict=True)):
    if plan in flat_offsets:
      placements[i] = TablePlacement(s, plan, offset=flat_offsets[plan])
      flat_offsets[plan] += s.rows
  layout = EmbeddingLayout(
    placements=tuple(placements),
    model_size=model_size,
    dim=dim,
    rows_per_shard=max(local_rows),
    column_rows=flat_offsets["column"],
    replicated_rows=flat_offsets["replicated"],
    table_slots=max(loads.count),
  )
  if device_memory_bytes is not None:
    need = max(layout.shard_bytes(slot_floats_per_row))
    if need > device_memory_bytes:
      raise _refuse(need, device_memory_bytes, "the embedding plan (buffers as allocated)")
  return layout


def plan_layout(
  specs: Sequence[TableSpec],
  model_size: int,
  *,
  default: str = "auto",
  overrides: Mapping[str, str] | None = None,
  slot_floats_per_row: int = 0,
  device_memory_bytes: int | None = None,
  lookups: Sequence[float] | None = None,
) -> EmbeddingLayout:
  """``choose_plans`` then ``build_layout``: the planner's whole decision."""
  plans = choose_plans(
    specs,
    model_size,
    default=default,
    overrides=overrides,
    slot_floats_per_row=slot_floats_per_row,
    device_memory_bytes=device_memory_bytes,
    lookups=lookups,
  )
  return build_layout(
    specs,
    plans,
    model_size,
    device_memory_bytes=device_memory_bytes,
    slot_floats_per_row=slot_floats_per_row,
    lookups=lookups,
  )


def plan_table(layout: EmbeddingLayout, slot_floats_per_row: int = 0) -> str:
  """The start-up plan table: table, rows, plan, devices, bytes per device, totals."""
  lines = [f"{'table':<8} {'rows':>10} {'plan':<10} {'devices':<12} {'bytes/device':>12}"]
  for i, p in enumerate(layout.placements):
    per_dev = layout.table_bytes_per_device(i, slot_floats_per_row)
    devs = [k for k, b in enumerate(per_dev) if b]
    where = (
      f"{devs[0]}"
      if len(devs) == 1
      else "all"
      if len(devs) == layout.model_size
      else ",".join(map(str, devs))
    )
    lines.append(
      f"{p.spec.name:<8} {p.spec.rows:>10} {p.plan:<10} {where:<12} "
      f"{format_bytes(max(per_dev)):>12}"
    )
  totals = [
    sum(
      layout.table_bytes_per_device(i, slot_floats_per_row)[k]
      for i in range(len(layout.placements))
    )
    for k in range(layout.model_size)
  ]
  lines.append(
    "total bytes per model shard: "
    + ", ".join(f"{k}: {format_bytes(t)}" for k, t in enumerate(totals))
  )
  mean = sum(totals) / len(totals)
  lines.append(
    f"max {format_bytes(max(totals))}, max/mean {max(totals) / max(mean, 1):.3f}; "
    f"allocated with padding {format_bytes(layout.shard_bytes(slot_floats_per_row)[0])}"
    f" per shard (tables + optimizer slots; replicated over the data axis)"
  )
  return "\n".join(lines)


def format_bytes(b: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if b < 1024 or unit == "GiB":
      return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
    b /= 1024
  return f"{b:.1f} GiB"
