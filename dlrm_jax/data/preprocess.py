"""Reference-compatible Criteo preprocessing.

Raw TSV (Kaggle or Terabyte days) -> columnar .npy splits + metadata.json.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dlrm_jax.data import bad_rows, columns, prefetch, raw_ids, store, terabyte, tsv_parser
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import vocab as vocab_lib
from dlrm_jax.data.streaming import (
  SUB_SAMPLE_RULE,
  Segment,
  check_stream,
  chunk_bytes_for,
  dense_transform,
  stream,
)


def check_raw_file(path: str, *, labeled: bool = True) -> None:
  """Clear errors for a missing or empty file, and for a file with(out) the label column."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file")
  with tsv_parser.open_raw(path) as f:
    empty = not f.read(1)
  head = tsv_parser.first_line(path)
  if empty:
    raise bad_rows.BadRowError(f"{path}: the file is empty (no rows); re-download or re-extract it")
  fields = head.count(b"\t") + 1
  if labeled and fields == cf.NUM_FIELDS - 1:
    raise bad_rows.BadRowError(
      f"{path}: lines have {fields} fields, no label column: "
      f"this looks like Kaggle's unlabeled test.txt. "
      f"Training and evaluation need labelled rows (train.txt); score unlabeled files with "
      f"--mode=predict --predict_file={path}"
    )
  if not labeled and fields == cf.NUM_FIELDS:
    raise bad_rows.BadRowError(
      f"{path}: lines have {fields} fields, i.e. a label column; "
      f"--predict_file expects unlabeled rows "
      f"(Kaggle's test.txt, {cf.NUM_FIELDS - 1} fields). Evaluate labelled data with --mode=eval"
    )


def preprocess_criteo(
  raw_files: list[str],
  out_dir: str,
  *,
  dataset: str = "kaggle",
  max_ind_range: int = 0,
  min_frequency: int = 1,
  sub_sample_rate: float = 0.0,
  sub_sample_seed: int = 0,
  strict: bool = False,
  vocabulary: str = "train",
  chunk_rows: int = 1 << 19,
  num_days: int = cf.KAGGLE_NUM_DAYS,
  progress: bool = True,
  extra_metadata: dict[str, Any] | None = None,
  overwrite: bool = False,
  workers: int = 1,
  id_mapping: str = "vocabulary",
) -> dict[str, Any]:
  """Preprocess raw Criteo TSV files into `out_dir`; returns the metadata.

  dataset="kaggle": `raw_files` are concatenated and cut into `num_days`
  consecutive days of physical lines (splits.split_ranges: the last day halved
  into test, then validation). dataset="terabyte": one file per day (gzip or
  not), the last one halved; each day is cached under out_dir/days/ and reused
  (see terabyte.py).
  Output per split in ("train", "test", "validation"):
    {split}_dense.npy f32[N, 13], {split}_sparse.npy i32[N, 26], {split}_label.npy f32[N],
  plus vocab.npz and metadata.json (written last: its presence means finished).
  Dense: log(max(x, 0) + 1), missing -> 0. Sparse ids, vocabulary="train": per feature,
  the training days' values (after % max_ind_range when > 0) with count >= min_frequency,
  sorted, get ids 1..V; id 0 is missing, unseen in training, or rare; table size V + 1.
  vocabulary="reference" (facebookresearch/dlrm's rule): every distinct value of every kept
  row of all days, a missing value being the value 0, sorted, gets ids 0..V-1; table size V.
  Negatives of training days are dropped per SUB_SAMPLE_RULE when sub_sample_rate > 0.
  Bad rows are skipped and counted (metadata["bad_rows"]), or raise BadRowError
  with their file:line when strict. chunk_rows bounds memory. Raw text is parsed by `workers`
  processes (0 = one per available core, 1 = in this process only); the output is the same.
  id_mapping="hash" (Kaggle layout only): one pass, no vocabulary; {split}_sparse.npy holds
  uint32 raw values, a missing value being the value 0 (raw_ids.py); max_ind_range, min_frequency
  and vocabulary do not apply.
  A finished directory made from the same files (path, size, mtime) and options
  is reused unless overwrite=True.
  """
  if workers < 0:
    raise ValueError(f"workers={workers}: must be >= 0 (0 = one per core)")
  if id_mapping not in ("vocabulary", "hash"):
    raise ValueError(f"id_mapping={id_mapping!r}: expected vocabulary or hash")
  if id_mapping == "hash" and (dataset != "kaggle" or vocabulary != "train" or min_frequency > 1):
    raise ValueError(
      "id_mapping=hash: only the Kaggle layout, with vocabulary=train and min_frequency 1"
    )
  options = preprocess_options(
    raw_files,
    dataset=dataset,
    max_ind_range=max_ind_range,
    min_frequency=min_frequency,
    sub_sample_rate=sub_sample_rate,
    sub_sample_seed=sub_sample_seed,
    vocabulary=vocabulary,
    num_days=num_days,
  )
  if id_mapping == "hash":  # raw values: the vocabulary's options play no part
    options.update(id_mapping="hash", max_ind_range=0, min_frequency=1)
  report = bad_rows.BadRowReport(strict=strict)
  if not overwrite and (meta := store.cached_metadata(out_dir, options)) is not None:
    report.merge(meta.get("bad_rows", {}))
    return meta
  meta_path = prepare_out_dir(out_dir)

  if id_mapping == "hash":
    meta = raw_ids.preprocess_kaggle_raw(
      raw_files, out_dir, options, report, chunk_rows, progress, workers
    )
  elif dataset == "terabyte":
    meta = terabyte.preprocess_days(
      raw_files,
      out_dir,
      options,
      report,
      chunk_rows=chunk_rows,
      progress=progress,
      overwrite=overwrite,
      workers=workers,
    )
  else:
    meta = _preprocess_kaggle(raw_files, out_dir, options, report, chunk_rows, progress, workers)
  if extra_metadata:
    meta.update(extra_metadata)
  store.write_json_atomic(meta_path, meta)
  return meta


def preprocess_options(
  raw_files: list[str],
  *,
  dataset: str,
  max_ind_range: int,
  min_frequency: int,
  sub_sample_rate: float,
  sub_sample_seed: int,
  vocabulary: str,
  num_days: int,
) -> dict[str, Any]:
  """Checks the options and raw files; returns the options part of metadata.json (shared with
  the Spark path, spark_preprocess.py, so that both write the same metadata)."""
  if dataset not in ("kaggle", "terabyte"):
    raise ValueError(f"dataset={dataset!r}: expected kaggle or terabyte")
  if not raw_files:
    raise ValueError("no raw files given")
  if max_ind_range < 0 or min_frequency < 1 or not 0.0 <= sub_sample_rate < 1.0:
    raise ValueError("need max_ind_range >= 0, min_frequency >= 1 and 0 <= sub_sample_rate < 1")
  if vocabulary not in ("train", "reference") or (vocabulary == "reference" and min_frequency > 1):
    raise ValueError(
      f"vocabulary={vocabulary!r}: expected train, or reference with min_frequency 1"
    )
  for path in raw_files:
    check_raw_file(path, labeled=True)
  if dataset == "terabyte":
    num_days = len(raw_files)
  return {
    "format_version": store.FORMAT_VERSION,
    "dataset": dataset,
    "max_ind_range": int(max_ind_range),
    "min_frequency": int(min_frequency),
    "num_days": int(num_days),
    "sub_sample_rate": float(sub_sample_rate),
    "sub_sample_seed": int(sub_sample_seed),
    "vocabulary": vocabulary,
    "source": store.source_fingerprint(raw_files),
  }


def prepare_out_dir(out_dir: str) -> str:
  """Makes out_dir, removes its metadata.json and half-written files; returns metadata's path."""
  os.makedirs(out_dir, exist_ok=True)
  meta_path = os.path.join(out_dir, store.METADATA_FILE)
  if os.path.exists(meta_path):
    os.remove(meta_path)  # the old files are about to be replaced one by one
  store.remove_partial_files(out_dir)  # left by a killed run
  return meta_path


def _preprocess_kaggle(
  raw_files: list[str],
  out_dir: str,
  options: dict[str, Any],
  report: bad_rows.BadRowReport,
  chunk_rows: int,
  progress: bool,
  workers: int = 1,
) -> dict[str, Any]:
  num_days = options["num_days"]
  num_lines = sum(tsv_parser.count_lines(p) for p in raw_files)
  ranges = splits_lib.split_ranges(num_lines, num_days)
  days = splits_lib.day_row_counts(num_lines, num_days)
  writers = {s: columns.ColumnsWriter(out_dir, s, with_missing=True) for s in splits_lib.SPLITS}
  day_starts = np.concatenate([[0], np.cumsum(days)]).tolist()
  segments = [
    Segment(day_starts[d], day_starts[d + 1], writers["train"], d, True)
    for d in range(num_days - 1)
  ]
  segments += [Segment(*ranges[s], writers[s], num_days - 1, False) for s in ("test", "validation")]
  counters = [vocab_lib.ValueCounter() for _ in range(cf.NUM_SPARSE)]
  stats = stream(
    raw_files,
    segments,
    report,
    max_ind_range=options["max_ind_range"],
    sub_sample_rate=options["sub_sample_rate"],
    sub_sample_seed=options["sub_sample_seed"],
    chunk_bytes=chunk_bytes_for(raw_files, chunk_rows),
    counters=counters,
    count_all=options["vocabulary"] == "reference",
    progress=progress,
    progress_total=num_lines,
    workers=workers,
  )
  check_stream(stats, num_lines, raw_files, report)
  for w in writers.values():
    w.close()
  counted = [c.result() for c in counters]
  vocabulary = options["vocabulary"]
  vocabs = [vocab_lib.build_vocab(v, c, options["min_frequency"], vocabulary) for v, c in counted]
  tables = vocab_lib.build_tables(vocabs)
  columns.remap_in_place(list(writers.values()), tables, progress, vocabulary)
  for w in writers.values():
    w.commit(keep_missing=False)
  return store.finish_outputs(
    out_dir,
    options,
    vocabs,
    counted,
    writers,
    report,
    {
      "sub_sample_rule": SUB_SAMPLE_RULE,
      "num_lines": num_lines,
      "line_ranges": {s: list(r) for s, r in ranges.items()},
      "day_line_counts": days,
      "dropped_negatives": stats["dropped_negatives"],
    },
  )


def encode_unlabeled(path: str, processed_dir: str, *, chunk_rows: int = 1 << 19):
  """A raw unlabeled Criteo file (Kaggle test.txt: 39 fields) encoded with `processed_dir`'s
  training vocabulary and options, exactly as preprocessing encodes rows -> store.SplitArrays
  (label all 0).

  Every line must be good (each line is one Id of a submission), so a bad row raises
  BadRowError with its file:line. Under --vocabulary=reference a value no day had takes the row
  of the value 0 (a missing value's row); a feature without that row raises BadRowError.
  """
  meta = store.read_metadata(processed_dir)
  check_raw_file(path, labeled=False)
  if meta.get("id_mapping") == "hash":
    return _raw_unlabeled(path, chunk_rows)
  tables = vocab_lib.build_tables(store.load_vocab(processed_dir, meta["sparse_names"]))
  max_ind_range = int(meta.get("max_ind_range", 0))
  vocabulary = meta.get("vocabulary", "train")
  zero_rows = [
    tables[j].lookup(np.zeros(1, np.uint32), np.zeros(1, bool))[0] - 1 for j in range(cf.NUM_SPARSE)
  ]
  report = bad_rows.BadRowReport(strict=True)
  dense, sparse = [], []
  with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    chunks = tsv_parser.iter_parsed(
      path, report, labeled=False, chunk_bytes=chunk_bytes_for([path], chunk_rows)
    )
    for parsed in prefetch.background(chunks):
      chunk = parsed.raw
      if 0 < max_ind_range < 2**32:
        chunk.cat_t[...] %= np.uint32(max_ind_range)
      dense.append(dense_transform(chunk.dense))
      bits = np.packbits(chunk.missing_t, axis=0).T
      ids = columns.remap_block(chunk.cat_t.T, bits, tables, pool, vocabulary)
      if vocabulary == "reference":
        _unseen_to_zero_row(ids, zero_rows, path, parsed.lines, meta["sparse_names"])
      sparse.append(ids)
  dense_all = np.concatenate(dense) if dense else np.zeros((0, cf.NUM_DENSE), np.float32)
  sparse_all = np.concatenate(sparse) if sparse else np.zeros((0, cf.NUM_SPARSE), np.int32)
  return store.SplitArrays(
    dense=dense_all, sparse=sparse_all, label=np.zeros(dense_all.shape[0], np.float32)
  )


def _unseen_to_zero_row(
  ids: np.ndarray, zero_rows: list[int], path: str, lines: np.ndarray, names: list[str]
) -> None:
  """ids i32[n, 26] (reference vocabulary, -1 = unseen) in place: unseen -> the value 0's row."""
  for j in np.flatnonzero((ids < 0).any(axis=0)):
    unseen = ids[:, j] < 0
    if zero_rows[j] < 0:
      line = int(lines[np.argmax(unseen)]) + 1
      raise bad_rows.BadRowError(
        f"{path}:{line}: {names[j]} has a value no day of the preprocessed data had, and "
        f"--vocabulary=reference has no row for the value 0 to put it in; use --vocabulary=train"
      )
    ids[unseen, j] = zero_rows[j]


def _raw_unlabeled(path: str, chunk_rows: int) -> store.SplitArrays:
  """--id_mapping=hash: the raw uint32 values of every line (missing = 0); bad lines raise."""
  report = bad_rows.BadRowReport(strict=True)
  chunks = tsv_parser.iter_parsed(
    path, report, labeled=False, chunk_bytes=chunk_bytes_for([path], chunk_rows)
  )
  dense, sparse = [], []
  for parsed in prefetch.background(chunks):
    dense.append(dense_transform(parsed.raw.dense))
    sparse.append(parsed.raw.cat_t.T)  # the parser left 0 where missing
  dense_all = np.concatenate(dense) if dense else np.zeros((0, cf.NUM_DENSE), np.float32)
  sparse_all = np.concatenate(sparse) if sparse else np.zeros((0, cf.NUM_SPARSE), np.uint32)
  return store.SplitArrays(
    dense=dense_all, sparse=sparse_all, label=np.zeros(dense_all.shape[0], np.float32)
  )
