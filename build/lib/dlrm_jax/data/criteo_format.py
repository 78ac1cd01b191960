"""Criteo Display Advertising (Kaggle / Terabyte) raw-format constants."""

from __future__ import annotations

NUM_DENSE: int = 13
NUM_SPARSE: int = 26
# Raw train.txt line: label \t I1..I13 \t C1..C26; an empty field means missing.
NUM_FIELDS: int = 1 + NUM_DENSE + NUM_SPARSE

LABEL_NAME: str = "label"
DENSE_NAMES: tuple[str, ...] = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
SPARSE_NAMES: tuple[str, ...] = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))
COLUMN_NAMES: tuple[str, ...] = (LABEL_NAME, *DENSE_NAMES, *SPARSE_NAMES)

# Rows in the Kaggle challenge's train.txt.
KAGGLE_NUM_ROWS: int = 45_840_617
# Kaggle "days": the reference cuts train.txt into this many consecutive pieces.
KAGGLE_NUM_DAYS: int = 7
# Criteo Terabyte (1TB Click Logs): one raw file per day, day_0 ... day_23.
TERABYTE_NUM_DAYS: int = 24

# Per-feature table sizes of the reference (facebookresearch/dlrm data_utils.py)
# on Kaggle train.txt without max_ind_range: distinct values over ALL 7 days,
# missing counted as the value 0. Our preprocessing builds the vocabulary from
# the training days only and reserves id 0, so its sizes differ slightly.
KAGGLE_TABLE_SIZES: tuple[int, ...] = (
  1460,
  583,
  10131227,
  2202608,
  305,
  24,
  12517,
  633,
  3,
  93145,
  5683,
  8351593,
  3194,
  27,
  14992,
  5461306,
  10,
  5652,
  2173,
  4,
  7046547,
  18,
  15,
  286181,
  105,
  142572,
)

assert len(KAGGLE_TABLE_SIZES) == NUM_SPARSE
