"""The reference's Kaggle day split.

Consecutive equal "days", the last one halved into test and validation.
"""

from __future__ import annotations

from dlrm_jax.data import criteo_format as cf

SPLITS: tuple[str, ...] = ("train", "test", "validation")


def day_row_counts(num_rows: int, num_days: int = cf.KAGGLE_NUM_DAYS) -> list[int]:
  """Rows per day, as facebookresearch/dlrm data_utils.getCriteoAdData computes them.

  `num_data_per_split, extras = divmod(total_count, days)` and then
  `total_per_file[j] += 1 for j in range(extras)`: the remainder goes one row
  each to the FIRST days (not the last), so days differ by at most one row.
  """
  if num_days < 2:
    raise ValueError(f"need at least 2 days (training days + the held-out day), got {num_days}")
  base, extras = divmod(num_rows, num_days)
  return [base + (1 if day < extras else 0) for day in range(num_days)]


def split_ranges(num_rows: int, num_days: int = cf.KAGGLE_NUM_DAYS) -> dict[str, tuple[int, int]]:
  """{split: (first_row, end_row)} over the file's row order.

  Days 0..num_days-2 are `train`. The last day is cut like the reference's
  `np.array_split(last_day_indices, 2)`: the first half, which gets the odd
  row, is `test`, the second half `validation`.
  """
  days = day_row_counts(num_rows, num_days)
  train_end = sum(days[:-1])
  test_end = train_end + (days[-1] + 1) // 2
  return {
    "train": (0, train_end),
    "test": (train_end, test_end),
    "validation": (test_end, num_rows),
  }
