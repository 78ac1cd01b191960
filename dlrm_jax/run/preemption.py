"""SIGTERM / SIGINT during training: ask the loop to checkpoint and stop; a second signal exits."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
  """While active, the first signal sets ``signum``; the loop saves at the next step boundary.

  The handler only records the signal: saving from inside a handler would run
  Orbax and XLA re-entrantly in the middle of a step.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    if self.signum is not None:
      sys.stderr.write(f"\nsecond {signal.Signals(signum).name}: exiting at once without saving\n")
      sys.stderr.flush()
      os._exit(128 + signum)
    self.signum = signum
    sys.stderr.write(
      f"\n{signal.Signals(signum).name} received: saving a checkpoint at the "
      f"next step boundary, then stopping (send it again to exit at once)\n"
    )
    sys.stderr.flush()

  def __enter__(self) -> PreemptionGuard:
    # Signal handlers can only be installed from the main thread (notebooks
    # may drive training from another); then signals keep their defaults.
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()
