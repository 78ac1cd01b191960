"""Raw Criteo files parsed in worker processes, several chunks at once, delivered in file order.

Parsing (pyarrow's tokenizer and the hex decoding) is most of preprocessing's time and runs in
one thread per chunk; processes put every core on it. The chunks come back in file order and are
placed at their line numbers here, so the output and the bad-row report are those of
tsv_parser.iter_parsed, byte for byte.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

from dlrm_jax.data import bad_rows, tsv_parser

# Below this a chunk's parse is too short to pay for shipping it to a process and back.
MIN_CHUNK_BYTES = 8 << 20


def available_cores() -> int:
  """Cores this process may run on (its affinity mask, e.g. under taskset), at least 1."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
  """workers > 0 as given; 0 = one per available core."""
  if workers < 0:
    raise ValueError(f"workers={workers}: must be >= 0 (0 = one per core)")
  return workers or available_cores()


def _is_gzip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"\x1f\x8b"


def line_ranges(path: str, chunk_bytes: int) -> list[tuple[int, int]]:
  """[start, end) byte ranges of a plain file, each about chunk_bytes and ending after a line
  break (the last one at the end of the file)."""
  size = os.path.getsize(path)
  ranges, start = [], 0
  with open(path, "rb") as f:
    while start < size:
      end = start + chunk_bytes
      while end < size:  # on to the next line break
        f.seek(end)
        block = f.read(1 << 16)
        cut = block.find(b"\n")
        if cut >= 0:
          end += cut + 1
          break
        end += len(block)
      end = min(end, size)
      ranges.append((start, end))
      start = end
  return ranges


def _parse_range(path: str, start: int, end: int, labeled: bool) -> tsv_parser.ParsedBuffer:
  """Worker: read bytes [start, end) of a plain file and parse them."""
  buf = bytearray(end - start)
  with open(path, "rb", buffering=0) as f:
    f.seek(start)
    with memoryview(buf) as view:  # released before buf may grow below
      got = 0
      while got < len(buf):
        n = f.readinto(view[got:])
        if not n:
          raise RuntimeError(f"{path}: shorter than when it was split (did it change?)")
        got += n
  unterminated = not buf.endswith(b"\n")
  if unterminated:  # the file's last line has no line break (only the last range can end so)
    buf += b"\n"
  return tsv_parser.parse_buffer(buf, labeled, unterminated)


def _ready() -> None:
  """A no-op task: returns once its worker has started."""


def _start_pool(workers: int) -> ProcessPoolExecutor:
  """`workers` started processes, each importing only this module (NumPy, pyarrow, the parser).

  forkserver, not fork: the parent may hold JAX's and pyarrow's threads, which fork would copy
  mid-lock. A forkserver or spawn worker also re-runs the parent's main script (main.py imports
  the CLI and JAX: seconds per worker), unless the script's path is hidden while the workers
  start, as here; they need only this module, which the server has already imported.
  """
  if "forkserver" in multiprocessing.get_all_start_methods():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
  else:  # Windows
    context = multiprocessing.get_context("spawn")
  pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
  main = vars(sys.modules["__main__"])
  hidden = {key: main.get(key) for key in ("__file__", "__spec__") if key in main}
  main.update(dict.fromkeys(hidden))  # None: multiprocessing then re-runs no script
  try:
    # One task per worker, submitted at once: the pool starts a process per submit until it has
    # `workers`, all of them now, while the main script is hidden.
    for future in [pool.submit(_ready) for _ in range(workers)]:
      future.result()
  except BaseException:
    pool.shutdown(wait=False, cancel_futures=True)
    raise
  finally:
    main.update(hidden)
  return pool


def iter_parsed(
  path: str,
  report: bad_rows.BadRowReport,
  *,
  labeled: bool = True,
  chunk_bytes: int = 64 << 20,
  workers: int = 0,
) -> Iterator[tsv_parser.ParsedChunk]:
  """tsv_parser.iter_parsed with up to `workers` chunks parsed at once in processes (0 = one per
  core). One worker, or a file too small to split, parses in this process as before.

  Plain files are split at line breaks and each worker reads its own range; gzip files are read
  here (they cannot be split) and their chunks sent to the workers.
  """
  workers = resolve_workers(workers)
  size = os.path.getsize(path)
  if workers > 1:  # at least two chunks per worker, so that all of them have work
    chunk_bytes = max(MIN_CHUNK_BYTES, min(chunk_bytes, -(-size // (2 * workers))))
  if workers == 1 or size < 2 * chunk_bytes:
    yield from tsv_parser.iter_parsed(path, report, labeled=labeled, chunk_bytes=chunk_bytes)
    return
  if _is_gzip(path):
    jobs = (
      (tsv_parser.parse_buffer, bytes(buf), labeled, unterminated)
      for buf, unterminated in tsv_parser.iter_byte_chunks(path, chunk_bytes)
    )
  else:
    jobs = (
      (_parse_range, path, start, end, labeled) for start, end in line_ranges(path, chunk_bytes)
    )
  pool = _start_pool(workers)
  pending: collections.deque[Future] = collections.deque()
  line = 0
  try:
    for job in jobs:
      pending.append(pool.submit(*job))
      # Two chunks per worker in flight keeps every worker busy and memory bounded.
      if len(pending) >= 2 * workers:
        parsed = tsv_parser.to_parsed_chunk(pending.popleft().result(), path, line, report)
        line = parsed.line_range[1]
        yield parsed
    while pending:
      parsed = tsv_parser.to_parsed_chunk(pending.popleft().result(), path, line, report)
      line = parsed.line_range[1]
      yield parsed
  finally:
    for future in pending:
      future.cancel()
    pool.shutdown(wait=True, cancel_futures=True)
