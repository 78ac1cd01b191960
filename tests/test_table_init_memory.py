"""The table-initialisation program at size: each device generates only its own shard."""

import jax
import pytest

from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.sharding.planner import plan_layout
from dlrm_jax.sharding.specs import table_specs
from dlrm_jax.sharding.table_init import init_program

ROWS, DIM = 2_000_000, 64
# The rows the init loop generates per iteration (table_init._INIT_CHUNK_ROWS),
# written out: the bound must not follow the code if the chunk grows.
CHUNK_BYTES = (1 << 16) * DIM * 4
WHOLE_TABLE = ROWS * DIM * 4  # 488 MiB


@pytest.mark.parametrize("plan", ["table", "row", "column", "replicated"])
def test_init_temporaries_are_a_few_chunks_per_device(plan):
  mesh = mesh_lib.make_mesh((8,))
  layout = plan_layout(table_specs(["C1", "C2"], [ROWS, 1000], DIM), 8, default=plan)
  assert {p.plan for p in layout.placements} == {plan}
  key = jax.eval_shape(jax.random.key, 0)
  memory = init_program(layout, mesh).lower(key).compile().memory_analysis()
  bound = 4 * CHUNK_BYTES
  assert bound < WHOLE_TABLE / 4
  # Per device: temporaries beside the shard it outputs. Building the whole
  # table and keeping some columns (as column-wise once did) needs 488 MiB.
  assert memory.temp_size_in_bytes <= bound, (plan, memory)
  per_device = {"table": WHOLE_TABLE, "replicated": WHOLE_TABLE}.get(plan, WHOLE_TABLE / 8)
  assert memory.output_size_in_bytes <= 1.01 * per_device + 1000 * DIM * 4, (plan, memory)
