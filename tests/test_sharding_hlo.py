"""The compiled train step: expected collectives, none table-sized, small temporaries, donation."""

import re

import jax
import numpy as np
import pytest
from sharding_testlib import BATCH, DIM, LR, MIXED_OVERRIDES, NAMES, make_batch, model

from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.sharding.exchange import exchange_bytes
from dlrm_jax.sharding.planner import plan_layout
from dlrm_jax.sharding.specs import table_specs
from dlrm_jax.train.state import create_train_state, dense_optimizer
from dlrm_jax.train.step import batch_shardings, make_train_step

# Tables large against the batch (64 examples), so a table-sized collective or
# temporary cannot hide among the batch-sized ones.
ROWS = (120_000, 80_000, 40_000, 20_000, 12_000, 8_000, 3_000, 2_000)
COLLECTIVE = re.compile(
  r"=\s*(.+?)\s+(all-reduce|all-gather|all-to-all|reduce-scatter|"
  r"collective-permute)(?:-start)?\("
)
SHAPE = re.compile(r"(pred|s32|u32|f32|bf16|f16|s8|u8|f64|s64|u64)\[([\d,]*)\]")
BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "bf16": 2,
  "f16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "f64": 8,
  "s64": 8,
  "u64": 8,
}


GROUP = re.compile(r"replica_groups=\{\{([\d,]+)\}")


def collectives(hlo: str) -> list[tuple[str, int, int]]:
  """(op, result bytes per device, group size) of every collective in compiled HLO text."""
  out = []
  for line in hlo.splitlines():
    m = COLLECTIVE.search(line)
    if m:
      group = len(GROUP.search(line).group(1).split(","))
      size = sum(
        BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
        for t, dims in SHAPE.findall(m.group(1))
      )
      out.append((m.group(2), size, group))
  return out


# Multi-hot: bags of up to 6 ids (the HLO test needs no valid ids, only shapes).
BAGS = (3, 1, 6, 2, 1, 4, 2, 5)


def compiled_step(mesh_shape, optimizer, bags=None, pooling="sum"):
  mesh = mesh_lib.make_mesh(mesh_shape)
  opt = SparseOptimizer(optimizer, LR)
  layout = plan_layout(
    table_specs(list(NAMES), list(ROWS), DIM, bags, pooling),
    mesh_lib.model_size(mesh),
    overrides=MIXED_OVERRIDES,
    slot_floats_per_row=opt.slot_floats_per_row(DIM),
  )
  tx, dense_model = dense_optimizer(optimizer, LR), model()
  # Abstract state carrying its shardings: compiling needs no table in memory.
  abstract = jax.eval_shape(
    lambda k: create_train_state(dense_model, layout, opt, tx, mesh, k), jax.random.key(0)
  )
  step = make_train_step(dense_model, layout, opt, tx, mesh, abstract)
  shardings = batch_shardings(mesh)
  shapes = {k: (v.shape, v.dtype) for k, v in make_batch(0, ROWS).items()}
  if bags:
    shapes["sparse"] = ((BATCH, sum(bags)), np.int32)
  batch = {k: jax.ShapeDtypeStruct(*v, sharding=shardings[k]) for k, v in shapes.items()}
  return layout, step.lower(abstract, batch).compile()


@pytest.mark.parametrize(
  "mesh_shape,optimizer,bags,pooling",
  [
    ((8,), "sgd", None, "sum"),
    ((2, 4), "adagrad", None, "sum"),
    ((2, 4), "adagrad", BAGS, "mean"),
  ],
  ids=["8-sgd", "2x4-adagrad", "2x4-adagrad-multihot-mean"],
)
def test_sharding_compiled_step_has_no_table_sized_collective_or_temp(
  mesh_shape, optimizer, bags, pooling
):
  layout, compiled = compiled_step(mesh_shape, optimizer, bags, pooling)
  assert {p.plan for p in layout.placements} == {"table", "row", "column", "replicated"}
  ops = collectives(compiled.as_text())
  kinds = {op for op, _, _ in ops}
  # table-wise / column-wise all_to_all, row-wise reduce-scatter, id and
  # gradient all-gathers, the dense-gradient all-reduce.
  assert {"all-to-all", "reduce-scatter", "all-gather", "all-reduce"} <= kinds, kinds
  smallest_table = min(ROWS) * DIM * 4
  largest_table = max(ROWS) * DIM * 4
  too_big = [(op, size) for op, size, _ in ops if size >= smallest_table]
  assert not too_big, too_big
  memory = compiled.memory_analysis()
  assert memory.temp_size_in_bytes < largest_table / 20, memory
  # Donated state: the tables and slots are updated in place, not copied.
  assert memory.alias_size_in_bytes > 0.95 * memory.argument_size_in_bytes, memory
  # benchmarks/sharding_plan.py's byte counts are those of this program: an
  # all-gather / all-to-all sends (n-1)/n of its result, a reduce-scatter n-1
  # times its result, from each device (the all-reduce is the dense gradients).
  sent = sum(
    size * (n - 1) / n if op in ("all-gather", "all-to-all") else size * (n - 1)
    for op, size, n in ops
    if op != "all-reduce"
  )
  data = mesh_shape[0] if len(mesh_shape) == 2 else 1
  expected = exchange_bytes(layout, data, BATCH)
  assert sent * 8 == expected["total"], (sent * 8, expected)
