"""Columnar output.

Append-only .npy writers, a split's column set, and raw value -> id remapping.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import vocab as vocab_lib
from dlrm_jax.data.store import FIELDS, PARTIAL

MISSING_BYTES = (cf.NUM_SPARSE + 7) // 8
# Ids are remapped in blocks of this many rows (bounded memory).
REMAP_BLOCK_ROWS = 1 << 20
_HEADER_BYTES = 128  # room for any 2-D shape; a multiple of 64 keeps the data aligned


class NpyAppender:
  """A .npy file written row block by row block; the row count is filled into its header by
  close()."""

  def __init__(self, path: str, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
    self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), tuple(row_shape), 0
    self._f = open(path, "wb")
    self._f.write(b"\0" * _HEADER_BYTES)

  def append(self, block: np.ndarray) -> None:
    if block.shape[1:] != self.row_shape:
      raise ValueError(f"{self.path}: rows of shape {block.shape[1:]}, expected {self.row_shape}")
    np.ascontiguousarray(block, dtype=self.dtype).tofile(self._f)
    self.rows += block.shape[0]

  def close(self) -> None:
    if self._f.closed:
      return
    header = {
      "descr": np.lib.format.dtype_to_descr(self.dtype),
      "fortran_order": False,
      "shape": (self.rows, *self.row_shape),
    }
    text = repr(header).encode("latin1")
    pad = _HEADER_BYTES - 10 - len(text) - 1
    self._f.seek(0)
    self._f.write(
      b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little") + text + b" " * pad + b"\n"
    )
    self._f.close()


class ColumnsWriter:
  """dense f32[N,13], sparse i32[N,26] (raw uint32 values or ids; sparse_dtype=np.uint32 keeps
  raw values), label f32[N] and optionally the missing bits u8[N,4] of one split or day, as
  `{prefix}_{field}.npy.partial` until commit()."""

  def __init__(
    self, out_dir: str, prefix: str, *, with_missing: bool, sparse_dtype: type = np.int32
  ) -> None:
    fields = FIELDS + (("missing",) if with_missing else ())
    self.paths = {f: os.path.join(out_dir, f"{prefix}_{f}.npy") for f in fields}
    shapes = {
      "dense": (np.float32, (cf.NUM_DENSE,)),
      "sparse": (sparse_dtype, (cf.NUM_SPARSE,)),
      "label": (np.float32, ()),
      "missing": (np.uint8, (MISSING_BYTES,)),
    }
    self.files = {f: NpyAppender(p + PARTIAL, *shapes[f]) for f, p in self.paths.items()}
    self.positives = 0.0

  @property
  def rows(self) -> int:
    return self.files["label"].rows

  def append(
    self, dense: np.ndarray, label: np.ndarray, sparse: np.ndarray, missing_bits: np.ndarray | None
  ) -> None:
    self.files["dense"].append(dense)
    self.files["label"].append(label)
    file = self.files["sparse"]
    # Raw uint32 values go to an i32 file bit for bit (remapped later) or to a u32 one as is.
    file.append(sparse.view(np.int32) if sparse.dtype != file.dtype == np.int32 else sparse)
    if "missing" in self.files:
      self.files["missing"].append(missing_bits)
    self.positives += float(label.sum())

  def close(self) -> None:
    for f in self.files.values():
      f.close()

  def partial(self, field: str) -> str:
    return self.paths[field] + PARTIAL

  def commit(self, keep_missing: bool = True) -> None:
    """Rename every closed file into place (the missing bits are deleted unless keep_missing)."""
    self.close()
    for field, final in self.paths.items():
      if field == "missing" and not keep_missing:
        os.remove(final + PARTIAL)
      else:
        os.replace(final + PARTIAL, final)


def remap_block(
  raw: np.ndarray,
  missing_bits: np.ndarray,
  tables: list[vocab_lib.IdTable],
  pool: ThreadPoolExecutor,
  vocabulary: str = "train",
) -> np.ndarray:
  """raw u32 (or i32 view) [n, 26] values and their missing bits u8[n, 4] -> int32[n, 26] ids.

  "train": vocab[k] -> k + 1, missing or unknown -> 0. "reference": vocab[k] -> k, a missing
  value is the value 0 (the raw value the parser left), unknown -> -1 (callers decide).
  """
  raw_t = np.ascontiguousarray(np.asarray(raw).view(np.uint32).T)
  miss_t = np.unpackbits(np.asarray(missing_bits), axis=1, count=cf.NUM_SPARSE).astype(bool).T
  ids_t = np.empty(raw_t.shape, dtype=np.int32)
  present = np.zeros(raw_t.shape[1], dtype=bool)

  def remap(j: int) -> None:
    if vocabulary == "reference":
      ids_t[j] = tables[j].lookup(raw_t[j], present) - 1
    else:
      ids_t[j] = tables[j].lookup(raw_t[j], miss_t[j])

  # NumPy gathers release the GIL, so features remap on all cores.
  list(pool.map(remap, range(cf.NUM_SPARSE)))
  return ids_t.T


def remap_in_place(
  writers: Sequence[ColumnsWriter],
  tables: list[vocab_lib.IdTable],
  progress: bool,
  vocabulary: str = "train",
) -> None:
  """Replace the raw values in each writer's closed sparse file by ids, block by block."""
  total = sum(w.rows for w in writers)
  with (
    tqdm(total=total, unit="rows", unit_scale=True, desc="ids", disable=not progress) as bar,
    ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
  ):
    for w in writers:
      sparse = np.load(w.partial("sparse"), mmap_mode="r+")
      missing = np.load(w.partial("missing"), mmap_mode="r")
      for a in range(0, w.rows, REMAP_BLOCK_ROWS):
        b = min(a + REMAP_BLOCK_ROWS, w.rows)
        sparse[a:b] = remap_block(sparse[a:b], missing[a:b], tables, pool, vocabulary)
        bar.update(b - a)
      sparse.flush()
      del sparse, missing
