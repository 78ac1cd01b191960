"""Bad raw rows: find them vectorised, skip-and-count or stop (--strict), and summarise them.

Kinds (the first matching one names a row):
  truncated_last_line   the file's last line has no line break and too few or too many fields
  wrong_column_count    any other line without exactly 40 (39 unlabeled) tab-separated fields
  stray_carriage_return a '\\r' that is not part of a CRLF line ending
  bad_label             a label that is not 0 or 1 (labeled files)
  bad_integer           an integer field that is not empty or -?[0-9]+ within int64
  bad_hex               a categorical field that is not 1-8 hex digits or empty
CRLF line endings are not bad: the '\\r' is dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dlrm_jax.data import criteo_format as cf

KINDS: tuple[str, ...] = (
  "truncated_last_line",
  "wrong_column_count",
  "stray_carriage_return",
  "bad_label",
  "bad_integer",
  "bad_hex",
)
_MAX_INT_DIGITS = 18  # always within int64; longer fields are checked one by one
_MAX_HEX_DIGITS = 8


class BadRowError(ValueError):
  """A bad raw row under --strict, or a file that cannot be used at all."""


def _byte_class(chars: bytes) -> np.ndarray:
  table = np.zeros(256, dtype=bool)
  table[list(chars)] = True
  return table


_NOT_DIGIT = ~_byte_class(b"0123456789")
_NOT_HEX = ~_byte_class(b"0123456789abcdefABCDEF")


def fits_int64(text: bytes) -> bool:
  """-?[0-9]+ text (any number of leading zeros) -> whether its value is within int64."""
  digits = text[1:] if text.startswith(b"-") else text
  digits = digits.lstrip(b"0") or b"0"
  if len(digits) > 19:  # also keeps int() below Python's 4300-digit limit
    return False
  value = -int(digits) if text.startswith(b"-") else int(digits)
  return -(2**63) <= value < 2**63


@dataclasses.dataclass
class BadRowReport:
  """Counts of skipped rows by kind and the first file:line (1-based) of each; strict raises
  instead."""

  strict: bool = False
  counts: dict[str, int] = dataclasses.field(default_factory=dict)
  first: dict[str, str] = dataclasses.field(default_factory=dict)

  def record(self, kind: str, path: str, lines: np.ndarray, sample: bytes) -> None:
    """lines: 0-based line numbers of `path` with this kind of problem (sorted); sample: the first
    one's text."""
    if lines.size == 0:
      return
    where = f"{path}:{int(lines[0]) + 1}"
    if self.strict:
      text = sample[:120].decode("utf-8", "replace")
      raise BadRowError(
        f"{where}: {kind.replace('_', ' ')}: {text!r} (--strict stops at the first bad row; "
        f"without it such rows are skipped and counted)"
      )
    self.counts[kind] = self.counts.get(kind, 0) + int(lines.size)
    self.first.setdefault(kind, where)

  def merge(self, other: dict[str, Any]) -> None:
    """Add a report saved with to_json() (e.g. a cached day's)."""
    counts, first = other.get("counts", {}), other.get("first", {})
    if self.strict and counts:
      kind = min(
        counts, key=lambda k: int(first[k].rsplit(":", 1)[1])
      )  # one file's report: by line
      raise BadRowError(
        f"{first[kind]}: {kind.replace('_', ' ')} (found by an earlier run without "
        f"--strict; --strict stops at the first bad row)"
      )
    for kind, n in counts.items():
      self.counts[kind] = self.counts.get(kind, 0) + n
      self.first.setdefault(kind, first[kind])

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def to_json(self) -> dict[str, Any]:
    return {"counts": dict(self.counts), "first": dict(self.first), "total": self.total}

  def summary(self) -> str:
    if not self.total:
      return "bad rows: none"
    parts = [
      f"{kind} {self.counts[kind]:,} (first at {self.first[kind]})"
      for kind in KINDS
      if kind in self.counts
    ]
    return f"bad rows skipped: {self.total:,}: " + "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class Scan:
  """Result of scanning one whole-line buffer: the good lines re-packed, and the bad ones by kind.

  clean:      bytes of the good lines only (CR dropped), each ending in '\\n'.
  good_lines: int64[g] 0-based line numbers (within the buffer) of those lines.
  bad:        {kind: int64[k] line numbers}; samples: {kind: text of the first}.
  num_lines:  lines in the buffer.
  longest_line: bytes of its longest good line.
  """

  clean: bytes
  good_lines: np.ndarray
  bad: dict[str, np.ndarray]
  samples: dict[str, bytes]
  num_lines: int
  longest_line: int = 0


def scan(buf: bytes | bytearray | memoryview, labeled: bool, unterminated_last: bool) -> Scan:
  """Classify every line of `buf` (whole lines, ending in '\\n') without a per-line Python loop."""
  data = np.frombuffer(buf, dtype=np.uint8)
  num_fields = cf.NUM_FIELDS if labeled else cf.NUM_FIELDS - 1
  nl = np.flatnonzero(data == 10)
  starts = np.concatenate([[0], nl[:-1] + 1]).astype(np.int64)
  ends = nl.astype(np.int64)  # exclusive, before '\n'
  num_lines = int(nl.size)
  has_crlf = (ends > starts) & (data[np.maximum(ends - 1, 0)] == 13)
  ends = ends - has_crlf
  tab_cum = np.concatenate([[0], np.cumsum(data == 9)])
  cr_cum = np.concatenate([[0], np.cumsum(data == 13)])
  tabs = tab_cum[ends] - tab_cum[starts]
  kind_of = np.full(num_lines, -1, dtype=np.int8)
  wrong = tabs != num_fields - 1
  if unterminated_last and num_lines and wrong[-1]:
    kind_of[-1] = KINDS.index("truncated_last_line")
    wrong[-1] = False
  kind_of[wrong] = KINDS.index("wrong_column_count")
  stray = (cr_cum[ends] - cr_cum[starts] > 0) & (kind_of < 0)
  kind_of[stray] = KINDS.index("stray_carriage_return")

  ok = np.flatnonzero(kind_of < 0)
  if ok.size:
    # Field boundaries of well-formed lines: their tabs, num_fields - 1 per line, in order.
    tab_pos = np.flatnonzero(data == 9)
    line_of_tab = np.searchsorted(nl, tab_pos)
    fields_tabs = tab_pos[np.isin(line_of_tab, ok)].reshape(ok.size, num_fields - 1)
    f_start = np.concatenate([starts[ok, None], fields_tabs + 1], axis=1)
    f_end = np.concatenate([fields_tabs, ends[ok, None]], axis=1)
    length = f_end - f_start
    nondigit = np.concatenate([[0], np.cumsum(_NOT_DIGIT[data])])
    nonhex = np.concatenate([[0], np.cumsum(_NOT_HEX[data])])
    first = 1 if labeled else 0
    ints = slice(first, first + cf.NUM_DENSE)
    d_len = length[:, ints]
    d_bad_chars = nondigit[f_end[:, ints]] - nondigit[f_start[:, ints]]
    minus = (d_len >= 2) & (data[np.minimum(f_start[:, ints], data.size - 1)] == ord("-"))
    int_bad = (d_bad_chars - minus) > 0
    for r, c in zip(*np.nonzero(~int_bad & (d_len > _MAX_INT_DIGITS + minus)), strict=True):
      lo = f_start[r, ints][c]
      int_bad[r, c] = not fits_int64(bytes(data[lo : lo + d_len[r, c]]))  # rare: long fields
    cats = slice(first + cf.NUM_DENSE, num_fields)
    hex_bad = ((nonhex[f_end[:, cats]] - nonhex[f_start[:, cats]]) > 0) | (
      length[:, cats] > _MAX_HEX_DIGITS
    )
    row_kind = np.full(ok.size, -1, dtype=np.int8)
    row_kind[hex_bad.any(axis=1)] = KINDS.index("bad_hex")
    row_kind[int_bad.any(axis=1)] = KINDS.index("bad_integer")
    if labeled:
      label_ok = (length[:, 0] == 1) & np.isin(
        data[np.minimum(f_start[:, 0], data.size - 1)], (48, 49)
      )
      row_kind[~label_ok] = KINDS.index("bad_label")
    kind_of[ok] = row_kind

  good = np.flatnonzero(kind_of < 0)
  keep = np.zeros(
    data.size + 1, dtype=np.int8
  )  # +1/-1 markers of kept byte ranges [start, end] (incl. '\n')
  np.add.at(keep, starts[good], 1)
  np.add.at(keep, nl[good] + 1, -1)
  mask = np.cumsum(keep[:-1]).astype(bool)
  mask[ends[good][has_crlf[good]]] = False  # drop the '\r' of CRLF
  clean = data[mask].tobytes()
  bad, samples = {}, {}
  for k, kind in enumerate(KINDS):
    lines = np.flatnonzero(kind_of == k)
    if lines.size:
      bad[kind] = lines
      samples[kind] = bytes(data[starts[lines[0]] : nl[lines[0]]])
  longest = int((nl[good] - starts[good]).max()) if good.size else 0
  return Scan(
    clean=clean,
    good_lines=good.astype(np.int64),
    bad=bad,
    samples=samples,
    num_lines=num_lines,
    longest_line=longest,
  )
