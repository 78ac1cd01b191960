"""Run an iterator one or more items ahead in a background thread.

pyarrow and NumPy release the GIL.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def background(items: Iterable[T], depth: int = 1) -> Iterator[T]:
  """Yield `items` in order while a thread produces up to `depth` items ahead; errors re-raise
  here."""
  q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, depth))
  stop = threading.Event()

  def put(item: tuple[str, object]) -> bool:
    # Polling keeps the thread responsive to `stop` when the consumer quits early.
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for item in items:
        if not put(("item", item)):
          return
      put(("end", None))
    except BaseException as exc:  # handed to the consumer
      put(("error", exc))

  thread = threading.Thread(target=produce, name="prefetch", daemon=True)
  thread.start()
  try:
    while True:
      kind, value = q.get()
      if kind == "end":
        return
      if kind == "error":
        raise value  # type: ignore[misc]
      yield value  # type: ignore[misc]
  finally:
    stop.set()
    thread.join(timeout=5)
