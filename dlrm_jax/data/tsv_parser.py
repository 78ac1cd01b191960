"""Vectorised parsing of raw Criteo TSV bytes into NumPy columns.

pyarrow.csv, no per-line Python.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dlrm_jax.data import bad_rows
from dlrm_jax.data import criteo_format as cf

# 8 hex digits fit in uint32; longer fields would not, so they are rejected.
_MAX_HEX_DIGITS = 8
_LO_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_LETTER_BITS = np.uint64(0x0101010101010101)


@dataclasses.dataclass(frozen=True)
class RawChunk:
  """One parsed block of consecutive rows.

  label:     int32[n]        0/1 click label (0 for unlabeled files).
  dense:     int64[n, 13]    raw integers, missing already 0.
  cat_t:     uint32[26, n]   hex value of each categorical, 0 where missing (feature-major,
                             so each feature is contiguous for counting and lookup).
  missing_t: bool[26, n]     True where the categorical field was empty.
  """

  label: np.ndarray
  dense: np.ndarray
  cat_t: np.ndarray
  missing_t: np.ndarray

  @property
  def num_rows(self) -> int:
    return int(self.label.shape[0])


def _read_options(
  block_size: int, labeled: bool = True
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
  # Single-threaded: pyarrow's own threads cost ~2x the CPU for little wall time on a busy
  # 2-core machine; callers overlap parsing with their NumPy work in a thread instead.
  names = list(cf.COLUMN_NAMES if labeled else cf.COLUMN_NAMES[1:])
  read = pacsv.ReadOptions(column_names=names, block_size=block_size, use_threads=False)
  # Criteo never quotes or escapes; turning both off keeps the tokenizer on its fast path.
  # Empty lines are rows (of one field), so rows and lines stay in step and a blank line is an
  # error.
  parse = pacsv.ParseOptions(
    delimiter="\t",
    quote_char=False,
    double_quote=False,
    escape_char=False,
    ignore_empty_lines=False,
  )
  # The label as bytes: pyarrow's int parser would also take "01" or "00".
  types: dict[str, pa.DataType] = {cf.LABEL_NAME: pa.binary()} if labeled else {}
  types.update({name: pa.int64() for name in cf.DENSE_NAMES})
  # binary (not string) skips UTF-8 validation; empty stays "" and marks missing.
  types.update({name: pa.binary() for name in cf.SPARSE_NAMES})
  convert = pacsv.ConvertOptions(
    column_types=types,
    null_values=[""],
    strings_can_be_null=False,
    quoted_strings_can_be_null=False,
  )
  return read, parse, convert


def _hex8_words(words: np.ndarray) -> np.ndarray | None:
  """uint64[m] little-endian words of 8 ASCII hex digits -> uint32[m] values, or None if a byte is
  not 0-9a-f.

  SWAR: all 8 digits of a word are decoded at once. Validation re-encodes the
  nibbles and compares: only '0'-'9' and 'a'-'f' survive the round trip with
  a nibble below 16, so no per-byte table lookup is needed.
  """
  nib = (words & _LO_NIBBLES) + ((words >> np.uint64(6)) & _LETTER_BITS) * np.uint64(9)
  is_letter = ((nib + np.uint64(0x0606060606060606)) >> np.uint64(4)) & _LETTER_BITS
  recoded = nib + np.uint64(0x3030303030303030) + is_letter * np.uint64(0x27)
  over15 = (nib + np.uint64(0x7070707070707070)) & np.uint64(0x8080808080808080)
  if not (np.array_equal(recoded, words) and not over15.any()):
    return None
  m16 = np.uint64(0x000F000F000F000F)
  pairs = ((nib & m16) << np.uint64(4)) | ((nib >> np.uint64(8)) & m16)
  m32 = np.uint64(0x000000FF000000FF)
  quads = ((pairs & m32) << np.uint64(8)) | ((pairs >> np.uint64(16)) & m32)
  m64 = np.uint64(0xFFFF)
  return (((quads & m64) << np.uint64(16)) | ((quads >> np.uint64(32)) & m64)).astype(np.uint32)


def _hex_lut() -> np.ndarray:
  lut = np.full(256, 255, dtype=np.uint8)
  for i, ch in enumerate("0123456789abcdef"):
    lut[ord(ch)] = i
    lut[ord(ch.upper())] = i
  return lut


_HEX_LUT = _hex_lut()


def _decode_hex_general(
  data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, column: str
) -> np.ndarray:
  """Slow-but-vectorised path for hex of 1..8 digits (any case): right-align into 8 slots."""
  if lengths.size and lengths.max() > _MAX_HEX_DIGITS:
    raise ValueError(f"{column}: categorical value longer than {_MAX_HEX_DIGITS} hex digits")
  slot = np.arange(_MAX_HEX_DIGITS)
  lead = (_MAX_HEX_DIGITS - lengths)[:, None]
  pos = starts[:, None] + slot[None, :] - lead
  used = slot[None, :] >= lead
  nib = _HEX_LUT[data[np.where(used, pos, 0)]]
  nib = np.where(used, nib, 0)
  if np.any(nib > 15):
    raise ValueError(f"{column}: categorical value is not hexadecimal")
  shifts = (4 * (_MAX_HEX_DIGITS - 1 - slot)).astype(np.uint32)
  return (nib.astype(np.uint32) << shifts).sum(axis=1, dtype=np.uint32)


def decode_hex_column(
  column: pa.Array | pa.ChunkedArray, name: str
) -> tuple[np.ndarray, np.ndarray]:
  """Binary hex column -> (uint32[n] values, bool[n] missing); empty string means missing."""
  if isinstance(column, pa.ChunkedArray):
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
  n = len(column)
  _, off_buf, data_buf = column.buffers()
  offsets = np.frombuffer(off_buf, dtype=np.int32, count=n + 1, offset=column.offset * 4)
  data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
  lengths = np.diff(offsets)
  missing = lengths == 0
  present = ~missing
  starts = offsets[:-1][present]
  values = np.zeros(n, dtype=np.uint32)
  plen = lengths[present]
  if starts.size == 0:
    return values, missing
  if np.all(plen == _MAX_HEX_DIGITS) and data.size >= _MAX_HEX_DIGITS:
    # An overlapping uint64 view: element i is the 8 bytes starting at byte i.
    words_view = np.ndarray(
      shape=(data.size - _MAX_HEX_DIGITS + 1,), dtype="<u8", buffer=data, strides=(1,)
    )
    decoded = _hex8_words(words_view[starts])
    if decoded is not None:
      values[present] = decoded
      return values, missing
  values[present] = _decode_hex_general(data, starts, plen, name)
  return values, missing


def _label_column(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
  """Binary label column -> int32[n]; ValueError unless every label is exactly "0" or "1"."""
  if isinstance(column, pa.ChunkedArray):
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
  n = len(column)
  if n == 0:
    return np.zeros(0, np.int32)
  _, off_buf, data_buf = column.buffers()
  offsets = np.frombuffer(off_buf, dtype=np.int32, count=n + 1, offset=column.offset * 4)
  if column.null_count or not np.all(np.diff(offsets) == 1):
    raise ValueError("a label is not one character")
  data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
  label = data.astype(np.int32) - ord("0")
  if label.min() < 0 or label.max() > 1:
    raise ValueError("a label is not 0 or 1")
  return label


def table_to_chunk(table: pa.Table, labeled: bool = True) -> RawChunk:
  """Parsed pyarrow table (40 Criteo columns, 39 unlabeled) -> RawChunk."""
  n = table.num_rows
  if labeled:
    label = _label_column(table.column(cf.LABEL_NAME))
  else:
    label = np.zeros(n, dtype=np.int32)
  dense = np.empty((n, cf.NUM_DENSE), dtype=np.int64)
  for j, name in enumerate(cf.DENSE_NAMES):
    dense[:, j] = table.column(name).fill_null(0).to_numpy()
  cat_t = np.empty((cf.NUM_SPARSE, n), dtype=np.uint32)
  missing_t = np.empty((cf.NUM_SPARSE, n), dtype=bool)
  for j, name in enumerate(cf.SPARSE_NAMES):
    cat_t[j], missing_t[j] = decode_hex_column(table.column(name), name)
  return RawChunk(label=label, dense=dense, cat_t=cat_t, missing_t=missing_t)


def parse_bytes(
  buf: bytes | bytearray | memoryview, block_size: int = 1 << 22, labeled: bool = True
) -> RawChunk:
  """Parse a whole-line byte range of a raw Criteo TSV file (zero-copy into pyarrow); raises on any
  bad row."""
  read, parse, convert = _read_options(block_size, labeled)
  source = pa.BufferReader(pa.py_buffer(buf))
  table = pacsv.read_csv(source, read_options=read, parse_options=parse, convert_options=convert)
  return table_to_chunk(table, labeled)


def open_raw(path: str) -> io.RawIOBase | gzip.GzipFile:
  """Binary reader of a raw file; gzip (by its magic bytes, whatever the name) is decompressed on
  the fly."""
  f = open(path, "rb", buffering=0)
  if f.read(2) == b"\x1f\x8b":
    f.close()
    return gzip.open(path, "rb")
  f.seek(0)
  return f


def count_lines(path: str, block: int = 1 << 24) -> int:
  """Number of rows in a text file, gzip or not (a last line without a newline counts too)."""
  count, last = 0, b"\n"
  with open_raw(path) as f:
    while chunk := f.read(block):
      count += chunk.count(b"\n")
      last = chunk[-1:]
  return count + (last != b"\n")


def first_line(path: str, limit: int = 1 << 16) -> bytes:
  """The first line of a raw file (without its line break); b"" for an empty file."""
  with open_raw(path) as f:
    head = f.read(limit)
  return head.split(b"\n", 1)[0].rstrip(b"\r")


# Bytes of well-formed Criteo text. A buffer with any other byte (space, '+', 'x', NUL, non-ASCII,
# a '\r' outside CRLF...) goes to bad_rows.scan: pyarrow's integer parser would accept " 5", "0x5".
_PLAIN = b"0123456789abcdefABCDEF-\t\n"


def plain_bytes(buf: bytes | bytearray | memoryview) -> bool:
  """True if buf holds only hex digits, '-', tabs, newlines and CRLF line ends."""
  data = bytes(buf) if isinstance(buf, memoryview) else buf  # translate needs bytes(-like)
  if data.translate(None, _PLAIN) == b"":
    return True
  return data.count(b"\r") == data.count(b"\r\n") and not data.translate(None, _PLAIN + b"\r")


def iter_byte_chunks(path: str, chunk_bytes: int) -> Iterator[tuple[bytearray | bytes, bool]]:
  """Yield (byte range, unterminated) of consecutive whole lines of a file (gzip or not).

  Each range is a fresh buffer filled by readinto and cut at its last line break, so only
  the partial last line is ever copied. A last line without a line break gets
  one appended and unterminated=True.
  """
  carry = b""
  with open_raw(path) as f:
    while True:
      buf = bytearray(len(carry) + chunk_bytes)
      buf[: len(carry)] = carry
      got = f.readinto(memoryview(buf)[len(carry) :])
      end = len(carry) + got
      if got == 0:
        break
      cut = buf.rfind(b"\n", 0, end) + 1
      if cut == 0:
        carry = bytes(buf[:end])
        continue
      carry = bytes(buf[cut:end])
      del buf[cut:]  # shrinks in place: no copy of the chunk
      yield buf, False
  if carry:
    yield carry + b"\n", True


@dataclasses.dataclass(frozen=True)
class ParsedChunk:
  """A RawChunk of the good rows of consecutive lines, and where those rows were.

  lines:      int64[n] 0-based line number in the file of each row (sorted).
  line_range: (first, end) line numbers the chunk covered, bad lines included.
  """

  raw: RawChunk
  lines: np.ndarray
  line_range: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ParsedBuffer:
  """parse_buffer's result for one buffer of whole lines, with line numbers within the buffer.

  bad: (kind, int64[k] sorted lines, sample text of the first) per kind of bad row, in the
  order of each kind's first line.
  """

  raw: RawChunk
  lines: np.ndarray
  num_lines: int
  bad: list[tuple[str, np.ndarray, bytes]]


def parse_buffer(
  buf: bytes | bytearray, labeled: bool = True, unterminated: bool = False
) -> ParsedBuffer:
  """Parse whole lines: pyarrow's fast path for clean bytes; otherwise a vectorised scan finds
  the bad lines and the rest is re-parsed. Pure (no report), so it can run in a worker process."""
  try:
    if not plain_bytes(buf):
      raise ValueError("bytes outside the fast path's alphabet")
    chunk = parse_bytes(buf, labeled=labeled)
    return ParsedBuffer(chunk, np.arange(chunk.num_rows, dtype=np.int64), chunk.num_rows, [])
  except (pa.ArrowInvalid, ValueError):
    found = bad_rows.scan(buf, labeled, unterminated)
    # In line order, so --strict names the first bad line of the chunk.
    bad = [
      (kind, lines, found.samples[kind])
      for kind, lines in sorted(found.bad.items(), key=lambda item: item[1][0])
    ]
    block = max(1 << 22, found.longest_line + 2)  # pyarrow needs a whole row in one block
    chunk = (
      parse_bytes(found.clean, block_size=block, labeled=labeled) if found.clean else _empty_chunk()
    )
    return ParsedBuffer(chunk, found.good_lines, found.num_lines, bad)


def to_parsed_chunk(
  parsed: ParsedBuffer, path: str, first_line: int, report: bad_rows.BadRowReport
) -> ParsedChunk:
  """A buffer's result placed at `first_line` of `path`; its bad rows go to `report`."""
  for kind, bad, sample in parsed.bad:
    report.record(kind, path, bad + first_line, sample)
  lines = parsed.lines + first_line
  return ParsedChunk(parsed.raw, lines, (first_line, first_line + parsed.num_lines))


def iter_parsed(
  path: str, report: bad_rows.BadRowReport, *, labeled: bool = True, chunk_bytes: int = 64 << 20
) -> Iterator[ParsedChunk]:
  """Parse a raw Criteo file chunk by chunk, in file order; bad rows go to `report` (skipped or
  raised).

  Clean chunks take pyarrow's fast path only; a chunk that fails it is scanned
  line by line (vectorised), its bad lines reported, and the rest re-parsed.
  """
  line = 0
  for buf, unterminated in iter_byte_chunks(path, chunk_bytes):
    parsed = to_parsed_chunk(parse_buffer(buf, labeled, unterminated), path, line, report)
    yield parsed
    line = parsed.line_range[1]


def _empty_chunk() -> RawChunk:
  return RawChunk(
    label=np.zeros(0, np.int32),
    dense=np.zeros((0, cf.NUM_DENSE), np.int64),
    cat_t=np.zeros((cf.NUM_SPARSE, 0), np.uint32),
    missing_t=np.zeros((cf.NUM_SPARSE, 0), bool),
  )
