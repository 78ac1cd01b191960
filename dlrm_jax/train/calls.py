"""Training steps grouped into device calls (--steps_per_call), and compiled ahead of the first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import jax
import numpy as np

from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.reporting.timings import Timings
from dlrm_jax.train.components import Components
from dlrm_jax.train.step import to_global


def flat_metrics(values: list) -> np.ndarray:
  """Per-step metrics (scalars, or [K] from multi-step calls) as one host array, in step order."""
  return np.concatenate([np.ravel(x) for x in jax.device_get(values)]) if values else np.zeros(0)


def compiled_on_first_call(
  jitted: Callable, timings: Timings, ahead: Future | None = None
) -> Callable:
  """``jitted``, compiled ahead of its first call so that the compilation is timed on its own.

  ``ahead``: a background compilation of the same program (memory_plan.compile_in_background);
  the first call waits for it, then finds the executable in JAX's caches. Should it have
  failed, or compiled other shapes, the program is simply compiled (or fails) here.
  """
  compiled = None

  def call(*args):
    nonlocal compiled
    if compiled is None:
      with timings.phase("compilation"):
        if ahead is not None:
          ahead.exception()  # waits; its error, if any, recurs below with the real arguments
        compiled = jitted.lower(*args).compile()
    return compiled(*args)

  return call


def device_calls(
  c: Components, loader: BatchLoader, start: int, total_steps: int
) -> Iterator[tuple[int, int, Any]]:
  """(first step, steps n, device batches) per train call, built ahead by prefetch.background.

  Calls end at multiples of --steps_per_call K: n = K gives one stacked [K, B, ...]
  batch; a shorter call (a resume mid-way, the last steps) gives a list of n batches.
  Ids are checked on the host, before they reach a device.
  """
  k = c.config.resolved_steps_per_call
  batches = loader.iterate(start, max(0, total_steps - start))
  step = start
  while step < total_steps:
    n = min(k - step % k, total_steps - step)
    host = [next(batches) for _ in range(n)]
    for batch in host:
      batch["sparse"] = c.check_ids(batch["sparse"])
    if n == k > 1:
      stacked = {key: np.stack([b[key] for b in host]) for key in host[0]}
      yield step, n, to_global(stacked, c.mesh, stacked=True)
    else:
      yield step, n, [to_global(b, c.mesh) for b in host]
    step += n
