"""A slow, row-by-row reference of Criteo preprocessing, written from the rules, for the tests.

A physical line (bytes, without its '\\n'; a final '\\r' is a CRLF ending) is good when it has
exactly 40 tab-separated fields (39 unlabeled), no other '\\r', a label "0" or "1", integers
empty or -?[0-9]+ within int64, and categoricals empty or 1-8 hex digits (any case). Vocabularies:
"train": the present values of the kept training rows (count >= min_frequency), sorted, get ids
1..V, id 0 = missing, unseen or rare; "reference" (facebookresearch/dlrm data_utils.py
getCriteoAdData): every row kept by sub-sampling, all days, an empty field is the value 0; the
distinct values, sorted, get ids 0..V-1.
"""

from __future__ import annotations

import math
import re

import numpy as np

INT = re.compile(rb"-?[0-9]+")
HEX = re.compile(rb"[0-9a-fA-F]{1,8}")


def line_kind(line: bytes, labeled: bool = True) -> str | None:
  """Why a physical line is bad, by plain rules; None if good."""
  if line.endswith(b"\r"):
    line = line[:-1]
  fields = line.split(b"\t")
  if len(fields) != (40 if labeled else 39):
    return "columns"
  if b"\r" in line:
    return "stray_carriage_return"
  first = 1 if labeled else 0
  if labeled and fields[0] not in (b"0", b"1"):
    return "bad_label"
  for f in fields[first : first + 13]:
    if f and not (INT.fullmatch(f) and -(2**63) <= to_int(f) < 2**63):
      return "bad_integer"
  if any(f and not HEX.fullmatch(f) for f in fields[first + 13 :]):
    return "bad_hex"
  return None


def to_int(text: bytes) -> int:
  """int() of -?[0-9]+ of any length (Python refuses over 4300 digits; leading zeros do not
  count, and anything longer than 20 digits is out of int64 range anyway)."""
  neg = text.startswith(b"-")
  digits = (text[1:] if neg else text).lstrip(b"0") or b"0"
  value = int(digits[:21])
  return -value if neg else value


def good_fields(line: bytes) -> list[bytes]:
  return (line[:-1] if line.endswith(b"\r") else line).split(b"\t")


def dense_of(fields: list[bytes]) -> list[float]:
  """The 13 integers (fields[0:13]) as log(max(x, 0) + 1), missing -> 0, in float32 like ours."""
  return [
    float(np.log(np.float32(max(to_int(f) if f else 0, 0)) + np.float32(1))) for f in fields[:13]
  ]


def raw_value(field: bytes, max_ind_range: int, vocabulary: str) -> int | None:
  """A categorical field's value; None for missing under "train" (0 under "reference")."""
  if field == b"":
    if vocabulary == "train":
      return None
    field = b"0"  # the reference: an empty field becomes the string "0"
  v = int(field, 16)
  return v % max_ind_range if max_ind_range else v


def split_days(
  days: list[list[bytes]], *, rate: float = 0.0, seed: int = 0
) -> dict[str, list[list[bytes]]]:
  """Good, kept rows (fields) per split: days but the last train (a negative dropped when its
  u_k < rate, u_k the k-th draw of default_rng([seed, day])); the last day halved by lines, the
  first half (with the odd line) test."""
  out: dict[str, list[list[bytes]]] = {"train": [], "test": [], "validation": []}
  for d, lines in enumerate(days):
    train = d < len(days) - 1
    u = np.random.default_rng([seed, d]).random(len(lines)) if train and rate else None
    cut = math.ceil(len(lines) / 2)
    for k, line in enumerate(lines):
      if line_kind(line):
        continue
      fields = good_fields(line)
      if u is not None and fields[0] == b"0" and u[k] < rate:
        continue
      out["train" if train else ("test" if k < cut else "validation")].append(fields)
  return out


def vocabularies(
  rows: list[list[bytes]],
  *,
  max_ind_range: int = 0,
  min_frequency: int = 1,
  vocabulary: str = "train",
  first: int = 1,
) -> list[dict[int, int]]:
  """Per feature {value: id} from the counted rows (fields, label first when first=1)."""
  counts: list[dict[int, int]] = [{} for _ in range(26)]
  for fields in rows:
    for t in range(26):
      v = raw_value(fields[first + 13 + t], max_ind_range, vocabulary)
      if v is not None:
        counts[t][v] = counts[t].get(v, 0) + 1
  base = 1 if vocabulary == "train" else 0
  return [
    {v: i + base for i, v in enumerate(sorted(v for v, c in cnt.items() if c >= min_frequency))}
    for cnt in counts
  ]


def encode_rows(
  rows: list[list[bytes]],
  vocab: list[dict[int, int]],
  *,
  max_ind_range: int = 0,
  vocabulary: str = "train",
  first: int = 1,
):
  """(dense f32[n,13], sparse i32[n,26], label f32[n]); unknown values -> 0 (train) or -1."""
  unknown = 0 if vocabulary == "train" else -1
  sparse = []
  for r in rows:
    values = [raw_value(r[first + 13 + t], max_ind_range, vocabulary) for t in range(26)]
    sparse.append([0 if v is None else vocab[t].get(v, unknown) for t, v in enumerate(values)])
  return (
    np.array([dense_of(r[first : first + 13]) for r in rows], np.float32).reshape(-1, 13),
    np.array(sparse, np.int32).reshape(-1, 26),
    np.array([float(r[0]) for r in rows] if first else [0.0] * len(rows), np.float32),
  )


def encode(
  rows: dict[str, list[list[bytes]]],
  *,
  max_ind_range: int = 0,
  min_frequency: int = 1,
  vocabulary: str = "train",
):
  """{split: (dense, sparse, label)} and the table sizes, for labeled rows per split."""
  counted = rows["train"] if vocabulary == "train" else [r for s in rows.values() for r in s]
  vocab = vocabularies(
    counted, max_ind_range=max_ind_range, min_frequency=min_frequency, vocabulary=vocabulary
  )
  arrays = {
    split: encode_rows(r, vocab, max_ind_range=max_ind_range, vocabulary=vocabulary)
    for split, r in rows.items()
  }
  base = 1 if vocabulary == "train" else 0
  return arrays, [len(v) + base for v in vocab]


def kaggle_days(lines: list[bytes], num_days: int = 7) -> list[list[bytes]]:
  """The reference's day cut: consecutive days, the first (n % num_days) one line longer."""
  base, extra = divmod(len(lines), num_days)
  out, start = [], 0
  for d in range(num_days):
    n = base + (1 if d < extra else 0)
    out.append(lines[start : start + n])
    start += n
  return out


def physical_lines(data: bytes) -> list[bytes]:
  """A file's lines without their '\\n' (a last line without one counts too)."""
  lines = data.split(b"\n")
  return lines[:-1] if lines[-1] == b"" else lines
