"""Wall time per phase of a run, for the {"timings": {...}} line of metrics.jsonl."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

PHASES = (
  "data_preparation",
  "table_initialisation",
  "compilation",
  "training",
  "evaluation",
  "checkpoint_waits",
)


class Timings:
  """Seconds per phase. A phase entered inside another is taken out of the outer one's time
  (``training`` is the loop's wall time minus the evaluations and saves within it)."""

  def __init__(self) -> None:
    self.seconds = dict.fromkeys(PHASES, 0.0)
    self._start = time.perf_counter()
    self._open: list[str] = []

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    if name not in self.seconds:
      raise KeyError(f"unknown phase {name!r}; one of {', '.join(PHASES)}")
    t = time.perf_counter()
    self._open.append(name)
    try:
      yield
    finally:
      self._open.pop()
      spent = time.perf_counter() - t
      self.seconds[name] += spent
      if self._open:
        self.seconds[self._open[-1]] -= spent

  def record(self) -> dict[str, dict[str, float]]:
    out = {k: round(v, 3) for k, v in self.seconds.items()}
    out["total"] = round(time.perf_counter() - self._start, 3)
    return {"timings": out}

  def text(self) -> str:
    r = self.record()["timings"]
    return "timings (s): " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in r.items())
