"""What a run leaves in its workdir (config.json, metrics.jsonl, TensorBoard) and shows."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import tqdm
from absl import logging

from dlrm_jax.config import Config
from dlrm_jax.reporting.tensorboard import TensorBoardLog


def announce(message: str) -> None:
  """A line the user should see (process 0 only): printed and logged.

  Printed rather than only logged because main.py keeps absl logging at
  WARNING by default: Orbax and JAX log dozens of INFO lines per checkpoint.
  """
  logging.info("%s", message)
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def write_config(workdir: str, config: Config) -> None:
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, "config.json.tmp")
  with open(tmp, "w") as f:
    f.write(config.to_json() + "\n")
  os.replace(tmp, os.path.join(workdir, "config.json"))


class MetricsLog:
  """Appends one JSON object per line to workdir/metrics.jsonl (only on process 0).

  ``resume_step=None`` starts a fresh file. A resumed run passes the restored
  step: records of later steps (written after that checkpoint, then lost) are
  dropped, so the file continues without duplicate steps. Evaluation records
  are written once per (step, split) even if an evaluation is redone.

  Every record written also goes to TensorBoard (workdir/tensorboard, see
  tensorboard_log.py) in the same call, so the two cannot diverge.
  """

  def __init__(
    self,
    workdir: str,
    *,
    enabled: bool = True,
    resume_step: int | None = None,
    tensorboard: bool = True,
  ):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    self.enabled = enabled
    self._evals: set[tuple[int, str]] = set()
    self._tb: TensorBoardLog | None = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if tensorboard:
      self._tb = TensorBoardLog(self.tensorboard_dir, resume_step=resume_step)
    if resume_step is None:
      if os.path.exists(self.path):
        os.remove(self.path)
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:  # a line cut short by a kill
            continue
          if isinstance(record, dict) and record.get("step", 0) <= resume_step:
            kept.append(line if line.endswith("\n") else line + "\n")
            if "split" in record:
              self._evals.add((record["step"], record["split"]))
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    if "split" in record:
      key = (record["step"], record["split"])
      if key in self._evals:
        return
      self._evals.add(key)
    clean = {
      k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }
    with open(self.path, "a") as f:
      f.write(json.dumps(clean) + "\n")
    if self._tb is not None:
      self._tb.write(clean)

  def write_config(self, config: Config, step: int) -> None:
    """The resolved config as text in TensorBoard (config.json holds it too)."""
    if self._tb is not None:
      self._tb.write_config(config.to_json(), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class Throughput:
  """Samples/s between successive ``mark`` calls."""

  def __init__(self):
    self._t = time.perf_counter()
    self._samples = 0

  def add(self, samples: int) -> None:
    self._samples += samples

  def mark(self) -> float:
    now = time.perf_counter()
    rate = self._samples / max(now - self._t, 1e-9)
    self._t, self._samples = now, 0
    return rate


def progress_bar(total_steps: int, initial: int, batch_size: int, enabled: bool, desc: str):
  """A bar counting examples, so its rate reads as samples/s and its ETA is honest."""
  return tqdm.tqdm(
    total=total_steps * batch_size,
    initial=initial * batch_size,
    unit="ex",
    unit_scale=True,
    disable=not enabled,
    desc=desc,
    dynamic_ncols=True,
    mininterval=1.0,
  )
