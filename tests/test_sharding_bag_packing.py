"""Table-wise multi-hot id slots: each owner packs its own bags (MLPerf DLRM-DCNv2 sizes)."""

import numpy as np

from dlrm_jax.sharding import bags
from dlrm_jax.sharding.planner import plan_layout
from dlrm_jax.sharding.specs import table_specs

# experiments/mlperf_dcnv2.flags: Terabyte tables at --max_ind_range=40000000, its bags.
ROWS = (
  40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
  2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)  # fmt: skip
BAGS = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)


def _layout(plan: str, model: int = 8):
  specs = table_specs([f"C{i + 1}" for i in range(26)], list(ROWS), 128, BAGS)
  return plan_layout(specs, model, default=plan, slot_floats_per_row=128)


def _ids_per_owner(layout) -> list[int]:
  """Brute force from the placements: each owner's sum of its table-wise bag sizes."""
  used = [0] * layout.model_size
  for p in layout.placements:
    if p.plan == "table":
      used[p.owner] += p.spec.bag_size
  return used


def test_slots_per_owner_are_the_most_ids_an_owner_uses():
  for plan in ("table", "auto"):
    layout = _layout(plan)
    tw = bags.table_wise_positions(layout)
    used = _ids_per_owner(layout)
    assert tw.cols.shape[1] == max(used), (plan, tw.cols.shape, used)
    assert tw.used.sum(axis=1).tolist() == used
    # Every owner's slots hold each of its bags once, back to back.
    for k in range(layout.model_size):
      feats = [f for f in tw.feature[k] if f >= 0]
      want = [j for j, f in enumerate(feats) for _ in range(BAGS[f])]
      got = tw.segment[k][tw.used[k]]
      np.testing.assert_array_equal(got, want)


def test_auto_plan_pads_mlperf_bags_at_most_one_and_a_half_times():
  layout = _layout("auto")
  tw = bags.table_wise_positions(layout)
  used = _ids_per_owner(layout)
  # Per-position widths padded these owners to 17 slots (2.2x the 62 ids used).
  assert tw.cols.shape[1] * layout.model_size <= 1.5 * sum(used), (tw.cols.shape, used)


def test_one_hot_keeps_one_slot_per_position():
  specs = table_specs([f"C{i + 1}" for i in range(26)], list(ROWS), 128)
  layout = plan_layout(specs, 8, default="table")
  tw = bags.table_wise_positions(layout)
  assert not tw.packed
  assert tw.cols.shape[1] == layout.table_slots
