"""Block-shuffled training order: seeded blocks of contiguous rows, shuffled in a bounded window.

At disk scale a random row costs a random page read per column file; reading blocks of
contiguous rows keeps the disk sequential. An epoch is a permutation of the split's blocks
drawn from (seed, epoch); process p of P owns blocks p, p + P, ... of that permutation, so it
reads only its own rows. Its blocks are cut into windows of ``buffer_blocks`` consecutive
blocks; a window is read (one contiguous read per block and column file) and its rows are
shuffled in memory by a permutation drawn from (seed, epoch, p, window). The process's stream is
its windows one after the other, and its local batch i of an epoch holds stream positions
[i*b, (i+1)*b) (in row order within the batch): a pure function of (seed, step), so a resumed
run sees the same batches.
"""

from __future__ import annotations

import mmap
import os
import threading
from concurrent import futures

import numpy as np

from dlrm_jax.data.checksums import Checksums
from dlrm_jax.data.store import FIELDS, SplitArrays

# 2^18 rows = 1 MiB of the narrowest column file (the f32 labels), 13 MiB of dense features.
DEFAULT_BLOCK_ROWS = 1 << 18
DEFAULT_BUFFER_BLOCKS = 4
# Windows held at once: the one being consumed, the one a batch may continue into, one read ahead.
WINDOWS_HELD = 3
_SALT = 0xB10C5  # keeps the block permutation's stream apart from other uses of (seed, epoch)


def row_bytes(arrays: SplitArrays) -> int:
  """Bytes of one row over all column files."""
  return sum(
    getattr(arrays, f).itemsize * int(np.prod(getattr(arrays, f).shape[1:])) for f in FIELDS
  )


def available_memory_bytes() -> int | None:
  """MemAvailable of /proc/meminfo (Linux), None where it cannot be read."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def guaranteed_local_rows(num_rows: int, block_rows: int, process_count: int) -> int:
  """Rows every process's stream holds in every epoch (the partial last block may be anyone's)."""
  num_blocks = -(-num_rows // block_rows)
  short = num_blocks * block_rows - num_rows  # rows missing from the last block
  return (num_blocks // process_count) * block_rows - short


def read_rows(array: np.ndarray, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
  """Rows [lo, hi) of a column into `out` (or a new array): one pread for a memory-mapped file.

  pread avoids a page fault per 4 KiB page of the mapping; a short read (the file changed or
  was truncated after it was opened) raises ValueError naming the file and the row range.
  """
  filename = getattr(array, "filename", None)
  # Only a whole-file mapping (np.load's) has an offset that locates its rows in the file.
  whole = isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)
  if out is None:
    out = np.empty((hi - lo,) + array.shape[1:], array.dtype)
  if not whole or filename is None or not array.flags.c_contiguous:
    out[...] = array[lo:hi]
    return out
  per_row = out.itemsize * int(np.prod(array.shape[1:]))
  offset = array.offset + lo * per_row
  with open(filename, "rb", buffering=0) as f:
    got = os.preadv(f.fileno(), [memoryview(out).cast("B")], offset)
  if got != out.nbytes:
    raise ValueError(
      f"{filename}: rows {lo}..{hi - 1} unreadable: the file ends {got} bytes into them "
      f"({out.nbytes} expected from byte {offset}); it was truncated or damaged on disk"
    )
  return out


class BlockOrder:
  """One process's block-shuffled stream over the epochs of a split (see the module docstring)."""

  def __init__(
    self,
    arrays: SplitArrays,
    block_rows: int,
    buffer_blocks: int,
    seed: int,
    process_index: int,
    process_count: int,
    checksums: Checksums | None = None,
  ) -> None:
    self.arrays = arrays
    self.checksums = checksums
    self.block_rows = block_rows
    self.buffer_blocks = buffer_blocks
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.num_blocks = -(-arrays.num_rows // block_rows)
    self.local_rows = guaranteed_local_rows(arrays.num_rows, block_rows, process_count)
    self._lock = threading.Lock()
    self._windows: dict[tuple[int, int], futures.Future] = {}
    self._reader = futures.ThreadPoolExecutor(1, thread_name_prefix="block-reader")
    self._io = futures.ThreadPoolExecutor(len(FIELDS), thread_name_prefix="block-io")
    self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def blocks(self, epoch: int) -> np.ndarray:
    """Block ids of this process's stream in epoch `epoch`, in stream order."""
    rng = np.random.default_rng([self.seed, epoch, _SALT])
    return rng.permutation(self.num_blocks)[self.process_index :: self.process_count]

  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(blocks, window_starts): stream position where each window begins, plus the end."""
    with self._lock:
      if epoch not in self._plans:
        blocks = self.blocks(epoch)
        first = blocks * self.block_rows
        sizes = np.minimum(first + self.block_rows, self.arrays.num_rows) - first
        per_window = np.add.reduceat(sizes, np.arange(0, blocks.size, self.buffer_blocks))
        starts = np.concatenate([[0], np.cumsum(per_window)])
        # This epoch and the one being read ahead at its end: O(blocks) memory.
        self._plans = {e: p for e, p in self._plans.items() if abs(e - epoch) == 1}
        self._plans[epoch] = (blocks, starts)
      return self._plans[epoch]

  def _spans(self, epoch: int, window: int) -> list[tuple[int, int]]:
    """Row ranges [lo, hi) of a window's blocks, in stream order."""
    blocks, _ = self._plan(epoch)
    ids = blocks[window * self.buffer_blocks : (window + 1) * self.buffer_blocks]
    n = self.arrays.num_rows
    return [(int(b) * self.block_rows, min((int(b) + 1) * self.block_rows, n)) for b in ids]

  def _order(self, epoch: int, window: int, size: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch, _SALT, self.process_index, window])
    return rng.permutation(size)

  def _read_window(self, epoch: int, window: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A window's rows of every column in stream order (unshuffled), and its shuffled order."""
    spans = self._spans(epoch, window)
    order = self._order(epoch, window, sum(hi - lo for lo, hi in spans))
    where = np.cumsum([0] + [hi - lo for lo, hi in spans])  # each block's place in the window

    def read(field: str) -> np.ndarray:
      column = getattr(self.arrays, field)
      out = np.empty((int(where[-1]),) + column.shape[1:], column.dtype)
      # In file order, so the disk goes front to back, each block into its stream place.
      for k in sorted(range(len(spans)), key=lambda k: spans[k]):
        block = read_rows(column, *spans[k], out=out[where[k] : where[k + 1]])
        if self.checksums is not None:
          self.checksums.verify(field, spans[k][0], block)
      return out

    # One reader per column file: several requests in flight keep a fast disk busy.
    return dict(zip(FIELDS, self._io.map(read, FIELDS), strict=True)), order

  def _window(self, epoch: int, window: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A window's columns, read in the background; the next window's read starts now."""
    _, starts = self._plan(epoch)
    following = (epoch, window + 1) if window + 2 < starts.size else (epoch + 1, 0)
    with self._lock:
      for key in ((epoch, window), following):
        if key not in self._windows:
          self._windows[key] = self._reader.submit(self._read_window, *key)
      # Older windows are done with: batches move forward (a resume starts afresh).
      for key in sorted(self._windows)[: max(0, len(self._windows) - WINDOWS_HELD)]:
        if key not in ((epoch, window), following):
          del self._windows[key]
      pending = self._windows[(epoch, window)]
    return pending.result()

  def rows(self, epoch: int, lo: int, hi: int) -> dict[str, np.ndarray]:
    """Columns of stream positions [lo, hi) of epoch `epoch` (hi <= self.local_rows)."""
    _, starts = self._plan(epoch)
    pieces = []
    window = int(np.searchsorted(starts, lo, side="right")) - 1
    while lo < hi:
      data, order = self._window(epoch, window)
      end = min(hi, int(starts[window + 1]))
      first = lo - int(starts[window])
      # One gather per row from the unshuffled window; ascending indices read memory in order
      # (the order of rows within a batch does not matter).
      picked = np.sort(order[first : first + end - lo])
      pieces.append({f: v[picked] for f, v in data.items()})
      lo, window = end, window + 1
    if len(pieces) == 1:
      return pieces[0]
    return {f: np.concatenate([p[f] for p in pieces]) for f in FIELDS}
