"""The planner: forced and per-table plans, balance, memory refusal, the plan table."""

import pytest

from dlrm_jax.sharding.planner import build_layout, choose_plans, plan_layout, plan_table
from dlrm_jax.sharding.specs import table_specs

# fmt: off
KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
# fmt: on


def kaggle(dim=16):
  return table_specs([f"C{i + 1}" for i in range(26)], KAGGLE, dim)


def loads(layout, slots=0):
  return [
    sum(layout.table_bytes_per_device(i, slots)[k] for i in range(len(layout.placements)))
    for k in range(layout.model_size)
  ]


@pytest.mark.parametrize("plan", ["table", "row", "column", "replicated"])
def test_sharding_forced_plan_applies_to_every_table(plan):
  assert set(choose_plans(kaggle(), 8, default=plan)) == {plan}


def test_sharding_overrides_win_over_default_and_auto():
  plans = choose_plans(kaggle(), 8, default="table", overrides={"C3": "row", "C12": "column"})
  assert plans[2] == "row" and plans[11] == "column" and plans.count("table") == 24
  auto = choose_plans(kaggle(), 8, overrides={"C1": "replicated"})
  assert auto[0] == "replicated"


@pytest.mark.parametrize("devices", [8, 64])
def test_sharding_auto_splits_big_tables_and_balances_load(devices):
  layout = plan_layout(kaggle(), devices)
  plans = [p.plan for p in layout.placements]
  # Tables bigger than an even share must be split (by columns where 16 divides
  # evenly, else by rows); tiny tables stay whole.
  split = "column" if 16 % devices == 0 else "row"
  share = sum(KAGGLE) / devices
  assert all(p == split for p, r in zip(plans, KAGGLE, strict=True) if r > share)
  assert all(p == "table" for p, r in zip(plans, KAGGLE, strict=True) if r < 1000)
  per_device = loads(layout)
  assert max(per_device) / (sum(per_device) / devices) < 1.06
  # Table-wise tables (the lookup volume of the all_to_all) spread evenly too.
  counts = [
    sum(1 for p in layout.placements if p.plan == "table" and p.owner == k) for k in range(devices)
  ]
  assert max(counts) - min(counts) <= 1


def test_sharding_auto_beats_forced_plans_on_largest_load():
  auto = max(loads(plan_layout(kaggle(), 8)))
  assert auto < 0.5 * max(loads(plan_layout(kaggle(), 8, default="table")))
  assert auto < 0.2 * max(loads(plan_layout(kaggle(), 8, default="replicated")))


def test_sharding_optimizer_state_counts_towards_memory():
  plain = max(loads(plan_layout(kaggle(), 8), 0))
  adagrad = max(loads(plan_layout(kaggle(), 8, slot_floats_per_row=16), 16))
  assert adagrad == pytest.approx(2 * plain, rel=0.02)
  # 300 MiB holds the SGD plan but not Adagrad's accumulators.
  plan_layout(kaggle(), 8, device_memory_bytes=300 * 2**20)
  with pytest.raises(ValueError, match="--device_memory_gb.*--mesh_shape"):
    plan_layout(kaggle(), 8, slot_floats_per_row=16, device_memory_bytes=300 * 2**20)


def test_sharding_whole_tables_when_balanced_split_when_not():
  # Four equal tables on four shards: one each, no reduce-scatter needed.
  assert choose_plans(table_specs(list("ABCD"), [1000] * 4, 4), 4) == ["table"] * 4
  # Three on four: a whole table would load one shard 4/3 of the even share
  # (dim 6 is not divisible by 4, so they are split by rows).
  specs = table_specs(list("ABC"), [1000] * 3, 6)  # 24000 B each
  assert choose_plans(specs, 4) == ["row"] * 3
  plan_layout(specs, 4, device_memory_bytes=18000)  # 3 * 250 rows * 24 B
  with pytest.raises(ValueError, match="--device_memory_gb"):
    plan_layout(specs, 4, device_memory_bytes=17999)


def test_sharding_refuses_a_forced_plan_that_cannot_fit():
  with pytest.raises(ValueError) as e:
    plan_layout(kaggle(), 8, default="table", device_memory_bytes=2**30 // 4)
  assert "--device_memory_gb" in str(e.value) and "--mesh_shape" in str(e.value)


def test_sharding_rejects_bad_overrides_and_column_width():
  with pytest.raises(ValueError, match="C99"):
    choose_plans(kaggle(), 8, overrides={"C99": "row"})
  with pytest.raises(ValueError, match="divisible"):
    choose_plans(kaggle(dim=12), 8, default="column")


def test_sharding_lookup_volume_is_balanced_with_bytes():
  # Four equal tables, two of them read 10 ids per example: each heavy table
  # gets a shard of its own rather than sharing one.
  specs = table_specs(["A", "B", "C", "D"], [100, 100, 100, 100], 4)
  layout = build_layout(specs, ["table"] * 4, 2, lookups=[10, 10, 1, 1])
  assert layout.placements[0].owner != layout.placements[1].owner


def test_sharding_plan_table_lists_every_table_and_totals():
  text = plan_table(plan_layout(kaggle(), 8), 1)
  lines = text.splitlines()
  assert lines[0].split() == ["table", "rows", "plan", "devices", "bytes/device"]
  assert sum(1 for line in lines if line.startswith("C")) == 26
  assert "total bytes per model shard" in text and "max/mean" in text


def test_sharding_big_tables_split_by_columns_when_the_dim_divides():
  big = [i for i, r in enumerate(KAGGLE) if r > 2_000_000]
  assert all(choose_plans(kaggle(dim=64), 8)[i] == "column" for i in big)
  assert all(choose_plans(kaggle(dim=12), 8)[i] == "row" for i in big)
  # Accelerators that gather narrow rows slowly can ask for wider pieces.
  assert all(choose_plans(kaggle(dim=16), 8, min_column_floats=4)[i] == "row" for i in big)
