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

# Per-feature table sizes of the reference on Criteo Terabyte at max_ind_range 40M
# (min(distinct values, 40M) per feature): MLPerf DLRM's and TorchRec's
# --num_embeddings_per_feature. 204,184,588 rows in all.
TERABYTE_MAX_IND_RANGE: int = 40_000_000
TERABYTE_TABLE_SIZES: tuple[int, ...] = (
  40000000,
  39060,
  17295,
  7424,
  20265,
  3,
  7122,
  1543,
  63,
  40000000,
  3067956,
  405282,
  10,
  2209,
  11938,
  155,
  4,
  976,
  14,
  40000000,
  40000000,
  40000000,
  590152,
  12973,
  108,
  36,
)

assert len(TERABYTE_TABLE_SIZES) == NUM_SPARSE
