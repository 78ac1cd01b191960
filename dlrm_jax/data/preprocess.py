"""Reference-compatible Criteo preprocessing: raw TSV -> columnar .npy splits plus metadata.json."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import prefetch
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import tsv_parser
from dlrm_jax.data import vocab as vocab_lib

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
VOCAB_FILE = "vocab.npz"
_PARTIAL = ".partial"
_MISSING_BYTES = (cf.NUM_SPARSE + 7) // 8
# Pass 2 remaps ids in place in blocks of this many rows (bounded memory).
_REMAP_BLOCK_ROWS = 1 << 20


def split_file(out_dir: str, split: str, field: str) -> str:
    """Path of one output array, e.g. train_sparse.npy."""
    return os.path.join(out_dir, f"{split}_{field}.npy")


def dense_transform(raw: np.ndarray) -> np.ndarray:
    """int64[n, 13] raw counts (missing already 0) -> float32 log(max(x, 0) + 1), as the reference."""
    return np.log(np.maximum(raw, 0).astype(np.float32) + np.float32(1.0))


def _source_fingerprint(raw_files: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for path in raw_files:
        st = os.stat(path)
        out.append({"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _write_json_atomic(path: str, obj: dict[str, Any]) -> None:
    tmp = path + _PARTIAL
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cached_metadata(out_dir: str, expected: dict[str, Any]) -> dict[str, Any] | None:
    path = os.path.join(out_dir, METADATA_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        meta = json.load(f)
    if any(meta.get(k) != v for k, v in expected.items()):
        return None
    for split in splits_lib.SPLITS:
        for field in ("dense", "sparse", "label"):
            if not os.path.exists(split_file(out_dir, split, field)):
                return None
    return meta


def _chunk_bytes(raw_files: Sequence[str], chunk_rows: int) -> int:
    """Bytes per parsed chunk so that a chunk holds about chunk_rows rows."""
    with open(raw_files[0], "rb") as f:
        head = f.read(1 << 20)
    lines = max(head.count(b"\n"), 1)
    return max(int(chunk_rows * len(head) / lines), 1 << 16)


def _iter_chunks(raw_files: Sequence[str], chunk_bytes: int) -> Iterator[tsv_parser.RawChunk]:
    for path in raw_files:
        yield from tsv_parser.iter_raw_chunks(path, chunk_bytes)


class _SplitWriter:
    """The .partial memmaps of one split; renamed into place only by finish()."""

    def __init__(self, out_dir: str, split: str, num_rows: int) -> None:
        self.paths = {f: split_file(out_dir, split, f) for f in ("dense", "sparse", "label")}
        mk = np.lib.format.open_memmap
        self.dense = mk(self.paths["dense"] + _PARTIAL, "w+", np.float32, (num_rows, cf.NUM_DENSE))
        self.sparse = mk(self.paths["sparse"] + _PARTIAL, "w+", np.int32, (num_rows, cf.NUM_SPARSE))
        self.label = mk(self.paths["label"] + _PARTIAL, "w+", np.float32, (num_rows,))
        self.missing_path = os.path.join(out_dir, f".{split}_missing{_PARTIAL}")
        self.missing = mk(self.missing_path, "w+", np.uint8, (num_rows, _MISSING_BYTES))
        self.positives = 0.0

    def finish(self) -> None:
        for arr in (self.dense, self.sparse, self.label):
            arr.flush()
        del self.dense, self.sparse, self.label, self.missing
        for final in self.paths.values():
            os.replace(final + _PARTIAL, final)
        os.remove(self.missing_path)


def _pass1(
    raw_files: Sequence[str], writers: dict[str, _SplitWriter], ranges: dict[str, tuple[int, int]],
    num_rows: int, max_ind_range: int, chunk_bytes: int, progress: bool,
) -> list[vocab_lib.ValueCounter]:
    """Parse every row once: final dense/label, raw hashed values into sparse, train value counts."""
    counters = [vocab_lib.ValueCounter() for _ in range(cf.NUM_SPARSE)]
    train_end = ranges["train"][1]
    row = 0
    with tqdm(total=num_rows, unit="rows", unit_scale=True, desc="parse", disable=not progress) as bar:
        # Parsing the next chunk (pyarrow, GIL released) overlaps this chunk's NumPy work.
        for chunk in prefetch.background(_iter_chunks(raw_files, chunk_bytes)):
            n = chunk.num_rows
            if row + n > num_rows:
                raise RuntimeError("raw files grew while being preprocessed")
            cat_t, missing_t = chunk.cat_t, chunk.missing_t
            if 0 < max_ind_range < 2**32:  # larger ranges leave uint32 hashes unchanged
                cat_t %= np.uint32(max_ind_range)
            dense = dense_transform(chunk.dense)
            label = chunk.label.astype(np.float32)
            missing_bits = np.packbits(missing_t, axis=0).T
            for split, (lo, hi) in ranges.items():
                a, b = max(lo, row), min(hi, row + n)
                if a >= b:
                    continue
                w, s = writers[split], slice(a - row, b - row)
                w.dense[a - lo : b - lo] = dense[s]
                w.label[a - lo : b - lo] = label[s]
                w.sparse[a - lo : b - lo] = cat_t[:, s].T.view(np.int32)
                w.missing[a - lo : b - lo] = missing_bits[s]
                w.positives += float(label[s].sum())
            n_train = max(0, min(train_end - row, n))
            if n_train:
                for j, counter in enumerate(counters):
                    counter.add(cat_t[j, :n_train][~missing_t[j, :n_train]])
            row += n
            bar.update(n)
    if row != num_rows:
        raise RuntimeError(f"parsed {row} rows but counted {num_rows}")
    return counters


def _pass2(writers: dict[str, _SplitWriter], vocabs: list[np.ndarray], progress: bool) -> None:
    """Replace raw hashed values by contiguous ids, in place, block by block."""
    total = sum(w.label.shape[0] for w in writers.values())
    with (
        tqdm(total=total, unit="rows", unit_scale=True, desc="ids", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
    ):
        tables = list(pool.map(vocab_lib.IdTable, vocabs))
        for w in writers.values():
            for a in range(0, w.label.shape[0], _REMAP_BLOCK_ROWS):
                b = min(a + _REMAP_BLOCK_ROWS, w.label.shape[0])
                raw_t = np.ascontiguousarray(np.asarray(w.sparse[a:b]).view(np.uint32).T)
                miss_t = np.unpackbits(w.missing[a:b], axis=1, count=cf.NUM_SPARSE).astype(bool).T
                ids_t = np.empty(raw_t.shape, dtype=np.int32)

                def remap(j: int) -> None:
                    ids_t[j] = tables[j].lookup(raw_t[j], miss_t[j])

                # NumPy gathers release the GIL, so features remap on all cores.
                list(pool.map(remap, range(cf.NUM_SPARSE)))
                w.sparse[a:b] = ids_t.T
                bar.update(b - a)


def preprocess_criteo(
    raw_files: list[str],
    out_dir: str,
    *,
    dataset: str = "kaggle",
    max_ind_range: int = 0,
    min_frequency: int = 1,
    chunk_rows: int = 1 << 19,
    num_days: int = cf.KAGGLE_NUM_DAYS,
    progress: bool = True,
    extra_metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Preprocess raw Criteo TSV files (concatenated in order) into `out_dir`; returns the metadata.

    Output per split in ("train", "test", "validation"):
      {split}_dense.npy f32[N, 13], {split}_sparse.npy i32[N, 26], {split}_label.npy f32[N],
    plus vocab.npz and metadata.json (written last: its presence means finished).
    Splits: see splits.split_ranges (the reference's 7 consecutive days; day 6 halved).
    Dense: log(max(x, 0) + 1), missing -> 0. Sparse ids: per feature, the training
    days' values (after % max_ind_range when > 0) with count >= min_frequency,
    sorted, get ids 1..V; id 0 is missing, unseen in training, or rare; table size V + 1.
    chunk_rows: about this many rows are parsed at a time (bounds memory).
    A finished directory made from the same files (path, size, mtime) and options
    is reused unless overwrite=True.
    """
    if dataset != "kaggle":
        raise NotImplementedError(f"dataset={dataset!r}: only the Kaggle day split is implemented")
    if not raw_files:
        raise ValueError("no raw files given")
    if max_ind_range < 0 or min_frequency < 1:
        raise ValueError("need max_ind_range >= 0 and min_frequency >= 1")
    options = {
        "format_version": FORMAT_VERSION, "dataset": dataset, "max_ind_range": int(max_ind_range),
        "min_frequency": int(min_frequency), "num_days": int(num_days),
        "source": _source_fingerprint(raw_files),
    }
    if not overwrite and (meta := _cached_metadata(out_dir, options)) is not None:
        return meta
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, METADATA_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the old files are about to be replaced one by one

    start = time.perf_counter()
    num_rows = sum(tsv_parser.count_lines(p) for p in raw_files)
    ranges = splits_lib.split_ranges(num_rows, num_days)
    writers = {s: _SplitWriter(out_dir, s, hi - lo) for s, (lo, hi) in ranges.items()}
    counters = _pass1(
        raw_files, writers, ranges, num_rows, max_ind_range, _chunk_bytes(raw_files, chunk_rows), progress
    )
    counted = [c.result() for c in counters]
    vocabs = [vocab_lib.build_vocab(v, c, min_frequency) for v, c in counted]
    _pass2(writers, vocabs, progress)

    positives = {s: w.positives for s, w in writers.items()}
    for w in writers.values():
        w.finish()
    vocab_tmp = os.path.join(out_dir, VOCAB_FILE + _PARTIAL + ".npz")
    np.savez(vocab_tmp, **{name: v for name, v in zip(cf.SPARSE_NAMES, vocabs)})
    os.replace(vocab_tmp, os.path.join(out_dir, VOCAB_FILE))

    sizes = {s: hi - lo for s, (lo, hi) in ranges.items()}
    meta = dict(options)
    meta.update({
        "table_sizes": [int(v.size) + 1 for v in vocabs],
        "num_rows": sizes,
        "row_ranges": {s: list(r) for s, r in ranges.items()},
        "day_row_counts": splits_lib.day_row_counts(num_rows, num_days),
        "positive_rate": {s: (positives[s] / sizes[s] if sizes[s] else 0.0) for s in sizes},
        "distinct_train_values": [int(v.size) for v, _ in counted],
        "num_dense": cf.NUM_DENSE,
        "num_sparse": cf.NUM_SPARSE,
        "dense_names": list(cf.DENSE_NAMES),
        "sparse_names": list(cf.SPARSE_NAMES),
        "dense_transform": "log(max(x, 0) + 1) in float32; missing -> 0",
        "id_convention": (
            "per feature, training-days values (after % max_ind_range) sorted ascending get ids 1..V; "
            "id 0 = missing, unseen in training, or rarer than min_frequency; table size V + 1"
        ),
        "seconds": round(time.perf_counter() - start, 3),
    })
    if extra_metadata:
        meta.update(extra_metadata)
    _write_json_atomic(meta_path, meta)
    return meta
