"""Host-side batch loading from preprocessed splits.

Deterministic, resumable, per-process slices.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dlrm_jax.data import block_shuffle as bs
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import prefetch
from dlrm_jax.data.checksums import Checksums
from dlrm_jax.data.shuffle import Permutation
from dlrm_jax.data.store import SplitArrays

Batch = dict[str, np.ndarray]
_WINDOW_POSITIONS = 1 << 16


def resolve_shuffle(shuffle: str, arrays: SplitArrays) -> tuple[str, str]:
  """(rows or blocks, why): --shuffle=auto reads blocks where the split is memory-mapped."""
  mapped = isinstance(arrays.label, np.memmap)
  where = "memory-mapped from disk" if mapped else "in RAM"
  if shuffle != "auto":
    return shuffle, f"--shuffle={shuffle}; the split is {where}"
  return ("blocks" if mapped else "rows"), f"--shuffle=auto and the split is {where}"


def validate_table_sizes(metadata: dict[str, Any], table_sizes: Sequence[int]) -> None:
  """Raise ValueError naming the feature when the data's ids do not fit the model's tables.

  metadata["table_sizes"][t] is max id + 1 of feature t; the model's table t
  needs at least that many rows (JAX would otherwise clamp or drop silently).
  """
  data_sizes = list(metadata["table_sizes"])
  if len(table_sizes) != len(data_sizes):
    raise ValueError(
      f"model has {len(table_sizes)} tables but the data has {len(data_sizes)} sparse features"
    )
  names = metadata.get("sparse_names", cf.SPARSE_NAMES)
  bad = [
    f"{names[t]}: data ids need {need} rows, model table has {have}"
    for t, (need, have) in enumerate(zip(data_sizes, table_sizes, strict=True))
    if have < need
  ]
  if bad:
    raise ValueError("sparse ids out of range for the model's embedding tables: " + "; ".join(bad))


def check_batch_ids(
  sparse: np.ndarray, table_sizes: Sequence[int], bag_sizes: Sequence[int] | None = None
) -> None:
  """Raise ValueError if any id in sparse i32[b, S] is out of its table's range.

  ``bag_sizes`` (multi-hot): feature t owns ``bag_sizes[t]`` consecutive columns
  and -1 marks an empty slot of a bag; None = one column per feature, no -1.
  """
  sizes = np.asarray(table_sizes)
  bags = np.ones(sizes.size, np.int64) if bag_sizes is None else np.asarray(bag_sizes)
  if sparse.shape[1] != bags.sum():
    raise ValueError(
      f"sparse batch has {sparse.shape[1]} id columns but the model expects {bags.sum()} "
      f"(--multi_hot_sizes gives {bags.tolist()})"
    )
  per_column = np.repeat(sizes, bags)
  lowest = -1 if (bags > 1).any() else 0
  bad = (sparse < lowest) | (sparse >= per_column[None, :])
  if bad.any():
    t = int(np.repeat(np.arange(sizes.size), bags)[np.argmax(bad.any(axis=0))])
    raise ValueError(f"{cf.SPARSE_NAMES[t]}: id out of range [{lowest}, {sizes[t]}) in batch")


def _check_blocks(
  arrays: SplitArrays, block_rows: int, buffer_blocks: int, local_batch: int, process_count: int
) -> None:
  """Refuses, naming the flag, block sizes that cannot work or a buffer that does not fit RAM."""
  n = arrays.num_rows
  if block_rows < 1 or buffer_blocks < 1:
    raise ValueError(
      f"--shuffle_block_rows={block_rows} and --shuffle_buffer_blocks={buffer_blocks}: "
      "both must be >= 1"
    )
  if bs.guaranteed_local_rows(n, block_rows, process_count) < local_batch:
    raise ValueError(
      f"--shuffle_block_rows={block_rows}: the split's {n:,} rows make "
      f"{-(-n // block_rows)} blocks, too few for {process_count} process(es) to get a "
      f"batch of {local_batch} rows each; use smaller blocks or --shuffle=rows"
    )
  if block_rows * buffer_blocks < local_batch:
    raise ValueError(
      f"--shuffle_block_rows={block_rows} x --shuffle_buffer_blocks={buffer_blocks} = "
      f"{block_rows * buffer_blocks} rows: the shuffle buffer is smaller than a process's batch "
      f"of {local_batch} rows, so a batch would mix only its few blocks; make it larger"
    )
  held = bs.WINDOWS_HELD * block_rows * buffer_blocks * bs.row_bytes(arrays)
  free = bs.available_memory_bytes()
  if free is not None and held > free // 2:
    raise ValueError(
      f"--shuffle_buffer_blocks={buffer_blocks} of --shuffle_block_rows={block_rows} rows: "
      f"the loader would hold {held / 2**30:.2f} GiB ({bs.WINDOWS_HELD} buffers), more than half "
      f"the {free / 2**30:.2f} GiB of memory available; use fewer or smaller blocks"
    )


class BatchLoader:
  """Global batches of one split, each process taking its contiguous slice of every global batch.

  shuffle=True (training): every epoch is a permutation drawn from (seed, epoch),
  evaluated per batch (shuffle.Permutation: memory O(batch), never O(rows)), the
  last partial batch is dropped, and batch `step` is a pure function of
  (seed, step), so a resumed run sees exactly the batches of an uninterrupted one.
  shuffle=False (evaluation): all rows in file order; the last global batch is
  padded to full size and `mask` is 0 on padding, so every row counts once.
  Batches: dense f32[b, 13], sparse i32[b, 26], label f32[b], mask f32[b],
  b = batch_size // process_count.
  order="blocks" (training only): batches come from block_shuffle.BlockOrder, contiguous
  blocks read sequentially and shuffled within a buffer of ``buffer_blocks`` blocks; each
  process reads only its own blocks, and its slice is its own stream's, not a slice of one
  global order; ``checksums`` (checksums.load) are verified on every block read.
  """

  def __init__(
    self,
    arrays: SplitArrays,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
    order: str = "rows",
    block_rows: int = bs.DEFAULT_BLOCK_ROWS,
    buffer_blocks: int = bs.DEFAULT_BUFFER_BLOCKS,
    checksums: Checksums | None = None,
  ) -> None:
    if batch_size <= 0 or batch_size % process_count:
      raise ValueError(
        f"global batch {batch_size} must be a positive multiple of process_count={process_count}"
      )
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    self.arrays = arrays
    self.batch_size = batch_size
    self.local_batch_size = batch_size // process_count
    self.shuffle = shuffle
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.prefetch = prefetch
    n = arrays.num_rows
    self.batches_per_epoch = n // batch_size if shuffle else -(-n // batch_size)
    if order not in ("rows", "blocks"):
      raise ValueError(f"--shuffle={order!r}: must be rows or blocks here")
    self.order = order if shuffle else "rows"
    self._blocks: bs.BlockOrder | None = None
    if self.order == "blocks":
      _check_blocks(arrays, block_rows, buffer_blocks, self.local_batch_size, process_count)
      self._blocks = bs.BlockOrder(
        arrays, block_rows, buffer_blocks, seed, process_index, process_count, checksums
      )
      self.batches_per_epoch = self._blocks.local_rows // self.local_batch_size
    if self.batches_per_epoch == 0:
      raise ValueError(f"split has {n} rows, fewer than one training batch of {batch_size}")
    self._perm_cache: Permutation | None = None
    self._perm_epoch = -1
    self._lock = threading.Lock()
    # Rows of this many consecutive positions are computed at once (one vectorised call instead
    # of one per small batch) and kept: 512 KiB, whatever the split's size.
    self._window = max(1, _WINDOW_POSITIONS // batch_size) * batch_size
    self._rows_cache: tuple[int, int, np.ndarray] | None = None  # (epoch, window, rows)

  def permutation(self, epoch: int) -> Permutation:
    """Epoch `epoch`'s order: position p of the epoch is row permutation(epoch)(p)."""
    with self._lock:
      if self._perm_cache is None or self._perm_epoch != epoch:
        self._perm_cache = Permutation(self.arrays.num_rows, [self.seed, epoch])
        self._perm_epoch = epoch
      return self._perm_cache

  def _epoch_rows(self, epoch: int, lo: int, hi: int) -> np.ndarray:
    """Rows at positions [lo, hi) of epoch `epoch` (within one window, as batches always are)."""
    w = lo // self._window
    with self._lock:
      cache = self._rows_cache
    if cache is None or cache[:2] != (epoch, w):
      first = w * self._window
      end = min(first + self._window, self.batches_per_epoch * self.batch_size)
      cache = (epoch, w, self.permutation(epoch)(np.arange(first, end)))
      with self._lock:
        self._rows_cache = cache
    first = w * self._window
    return cache[2][lo - first : hi - first]

  def _local_range(self, batch_in_epoch: int) -> tuple[int, int]:
    start = batch_in_epoch * self.batch_size + self.process_index * self.local_batch_size
    return start, start + self.local_batch_size

  def get_batch(self, step: int) -> Batch:
    """This process's part of global batch `step` (training steps run across epochs)."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, within = divmod(step, self.batches_per_epoch)
    lo, hi = self._local_range(within)
    a = self.arrays
    if self._blocks is not None:
      b = self.local_batch_size
      batch = self._blocks.rows(epoch, within * b, (within + 1) * b)
      return {**batch, "mask": np.ones(b, np.float32)}
    if self.shuffle:
      # Sorted rows read the memmap/array front to back; order within a batch does not matter.
      rows = np.sort(self._epoch_rows(epoch, lo, hi))
      return {
        "dense": a.dense[rows],
        "sparse": a.sparse[rows],
        "label": a.label[rows],
        "mask": np.ones(self.local_batch_size, np.float32),
      }
    real = max(0, min(hi, a.num_rows) - lo)
    b = self.local_batch_size
    batch = {
      "dense": np.zeros((b, cf.NUM_DENSE), np.float32),
      "sparse": np.zeros((b, a.sparse.shape[1]), np.int32),
      "label": np.zeros(b, np.float32),
      "mask": np.zeros(b, np.float32),
    }
    if real:
      batch["dense"][:real] = a.dense[lo : lo + real]
      batch["sparse"][:real] = a.sparse[lo : lo + real]
      batch["label"][:real] = a.label[lo : lo + real]
      batch["mask"][:real] = 1.0
    return batch

  def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[Batch]:
    """Batches start_step, start_step+1, ... built ahead in a background thread.

    num_steps=None: forever when shuffling, to the end of the pass otherwise.
    """
    if num_steps is None and not self.shuffle:
      num_steps = max(0, self.batches_per_epoch - start_step)
    steps = (
      itertools.count(start_step)
      if num_steps is None
      else range(start_step, start_step + num_steps)
    )
    return prefetch.background((self.get_batch(step) for step in steps), depth=self.prefetch)
