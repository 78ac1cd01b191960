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

from dlrm_jax.mesh import MODEL_AXIS
from dlrm_jax.specs import TableSpec

PLANS = ("table", "row", "column", "replicated")
BUFFER_OF_PLAN = {"table": "sharded", "row": "sharded", "column": "column",
                  "replicated": "replicated"}
BUFFER_SPECS = {"sharded": P(MODEL_AXIS, None), "column": P(None, MODEL_AXIS),
                "replicated": P(None, None)}


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
    shapes = {"sharded": (self.model_size * self.rows_per_shard, self.dim),
              "column": (self.column_rows, self.dim),
              "replicated": (self.replicated_rows, self.dim)}
    return {k: v for k, v in shapes.items() if v[0] > 0}

  def shard_bytes(self, slot_floats_per_row: int = 0) -> list[int]:
    """Bytes of tables (+ optimizer slots) that each model shard holds."""
    per_row = 4 * (self.dim + slot_floats_per_row)
    col_row = 4 * (self.dim // self.model_size + slot_floats_per_row)
    return [self.rows_per_shard * per_row + self.column_rows * col_row
            + self.replicated_rows * per_row] * self.model_size

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
      return [p.spec.rows * 4 * (p.spec.dim // m + slot_floats_per_row)] * m
    return [p.spec.rows * row_bytes] * m


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def choose_plans(specs: Sequence[TableSpec], model_size: int, *, default: str = "auto",
                 overrides: Mapping[str, str] | None = None) -> list[str]:
  """One plan per table: forced by ``default`` unless 'auto', then ``overrides``.

  'auto' keeps whole tables on one shard (table-wise, the paper's scheme)
  unless a table alone exceeds an even share of all table bytes, in which case
  splitting its rows (row-wise) is what lets the largest per-device load shrink.
  """
  overrides = dict(overrides or {})
  names = {s.name for s in specs}
  for name, plan in overrides.items():
    if name not in names:
      raise ValueError(f"--table_sharding names table {name!r}, which does not exist; "
                       f"tables are {', '.join(s.name for s in specs)}")
    if plan not in PLANS:
      raise ValueError(f"--table_sharding={name}:{plan}: plan must be one of {', '.join(PLANS)}")
  if default != "auto" and default not in PLANS:
    raise ValueError(f"--sharding={default!r}: must be auto or one of {', '.join(PLANS)}")
  even_share = sum(s.bytes for s in specs) / model_size
  plans = []
  for s in specs:
    if s.name in overrides:
      plans.append(overrides[s.name])
    elif default != "auto":
      plans.append(default)
    else:
      plans.append("row" if model_size > 1 and s.bytes > even_share else "table")
  for s, plan in zip(specs, plans):
    if plan == "column" and s.dim % model_size:
      raise ValueError(f"table {s.name}: column-wise sharding needs embedding_dim ({s.dim}) "
                       f"divisible by the model axis size ({model_size}); "
                       f"change --sharding/--table_sharding or --mesh_shape")
  return plans


def build_layout(specs: Sequence[TableSpec], plans: Sequence[str], model_size: int,
                 *, device_memory_bytes: int | None = None,
                 slot_floats_per_row: int = 0) -> EmbeddingLayout:
  """Places tables given their plans; balances table-wise tables greedily.

  Table-wise tables go, largest first, to the shard with the least load (bytes,
  then table count, which is the lookup volume in one-hot DLRM). Raises
  ValueError if a shard would exceed ``device_memory_bytes``.
  """
  if len({s.dim for s in specs}) > 1:
    raise ValueError("all tables must have the same embedding_dim")
  dim = specs[0].dim
  placements: list[TablePlacement | None] = [None] * len(specs)
  offset = 0
  for i, (s, plan) in enumerate(zip(specs, plans)):
    if plan == "row":
      chunk = _ceil_div(s.rows, model_size)
      placements[i] = TablePlacement(s, "row", offset=offset, chunk=chunk)
      offset += chunk
  load = [0] * model_size
  count = [0] * model_size
  local_rows = [offset] * model_size
  table_wise = sorted((i for i, p in enumerate(plans) if p == "table"),
                      key=lambda i: (-specs[i].rows, i))
  for i in table_wise:
    owner = min(range(model_size), key=lambda k: (load[k], count[k], k))
    placements[i] = TablePlacement(specs[i], "table", offset=local_rows[owner], owner=owner,
                                   slot=count[owner])
    load[owner] += specs[i].rows
    count[owner] += 1
    local_rows[owner] += specs[i].rows
  flat_offsets = {"column": 0, "replicated": 0}
  for i, (s, plan) in enumerate(zip(specs, plans)):
    if plan in flat_offsets:
      placements[i] = TablePlacement(s, plan, offset=flat_offsets[plan])
      flat_offsets[plan] += s.rows
  layout = EmbeddingLayout(
      placements=tuple(placements), model_size=model_size, dim=dim,
      rows_per_shard=max(local_rows), column_rows=flat_offsets["column"],
      replicated_rows=flat_offsets["replicated"], table_slots=max(count))
  if device_memory_bytes is not None:
    need = max(layout.shard_bytes(slot_floats_per_row))
    if need > device_memory_bytes:
      raise ValueError(
          f"the embedding plan needs {need / 2**30:.2f} GiB of tables and optimizer state per "
          f"device but --device_memory_gb allows {device_memory_bytes / 2**30:.2f} GiB; use more "
          f"model shards (--mesh_shape), row-wise sharding, or --max_ind_range")
  return layout


def plan_table(layout: EmbeddingLayout, slot_floats_per_row: int = 0) -> str:
  """A human-readable table: table, rows, plan, devices, bytes per device."""

  def fmt(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
      if b < 1024 or unit == "GiB":
        return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
      b /= 1024

  lines = [f"{'table':<8} {'rows':>10} {'plan':<10} {'devices':<12} {'bytes/device':>12}"]
  for i, p in enumerate(layout.placements):
    per_dev = layout.table_bytes_per_device(i, slot_floats_per_row)
    devs = [k for k, b in enumerate(per_dev) if b]
    where = (f"{devs[0]}" if len(devs) == 1 else
             "all" if len(devs) == layout.model_size else ",".join(map(str, devs)))
    lines.append(f"{p.spec.name:<8} {p.spec.rows:>10} {p.plan:<10} {where:<12} "
                 f"{fmt(max(per_dev)):>12}")
  totals = [sum(layout.table_bytes_per_device(i, slot_floats_per_row)[k]
                for i in range(len(layout.placements))) for k in range(layout.model_size)]
  lines.append("total per model shard: " + ", ".join(f"{k}: {fmt(t)}" for k, t in enumerate(totals)))
  lines.append(f"(tables are replicated over the data axis; buffer padding excluded)")
  return "\n".join(lines)
