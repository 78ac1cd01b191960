"""TensorBoard event files under workdir/tensorboard, written with tensorboardX (no TensorFlow)."""

from __future__ import annotations

import glob
import math
import os
from typing import Any

# Keys of a metrics.jsonl record that are not values to plot.
NOT_SCALARS = ("step", "split")


def scalar_tag(record: dict[str, Any], key: str) -> str:
  """The TensorBoard tag of ``record[key]``: ``train/loss``, ``validation/auc``, ``test/auc``."""
  return f"{record.get('split', 'train')}/{key}"


def scalars(record: dict[str, Any]) -> dict[str, float]:
  """The finite numeric values of a metrics.jsonl record, by tag (what TensorBoard gets)."""
  out = {}
  items = []
  for key, value in record.items():
    if isinstance(value, dict):  # {"parameters": {"dense": N, ...}} -> parameters/dense
      items.extend((f"{key}/{k}", v) for k, v in value.items())
    else:
      items.append((key, value))
  for key, value in items:
    if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
      continue
    if math.isfinite(value):
      out[scalar_tag(record, key)] = float(value)
  return out


def config_markdown(config_json: str) -> str:
  """The resolved config as a Markdown code block (TensorBoard's text tab renders Markdown)."""
  return "\n".join("    " + line for line in config_json.rstrip("\n").splitlines())


class TensorBoardLog:
  """Mirrors metrics.jsonl records as scalars: every record's numeric keys, at its step.

  ``resume_step=None`` starts afresh: event files of an earlier run in the same
  directory are removed, as metrics.jsonl is. A resumed run appends a new event
  file that starts with a SessionLog.START at ``resume_step + 1``
  (tensorboardX's ``purge_step``): TensorBoard's readers then drop the events of
  later steps from the earlier files, i.e. those written after the restored
  checkpoint and lost, the records metrics.jsonl drops too.
  """

  def __init__(self, logdir: str, *, resume_step: int | None = None):
    from tensorboardX import SummaryWriter

    self.logdir = logdir
    os.makedirs(logdir, exist_ok=True)
    if resume_step is None:
      for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        os.remove(path)
    purge = None if resume_step is None else resume_step + 1
    # File names are events.out.tfevents.<unix second>.<host><suffix>, read in name order:
    # the start step in the suffix keeps a resume started within the same second as its
    # predecessor from overwriting that file, and sorts it after.
    suffix = f".start{resume_step or 0:012d}"
    self._writer = SummaryWriter(logdir, purge_step=purge, flush_secs=30, filename_suffix=suffix)

  def write(self, record: dict[str, Any]) -> None:
    step = int(record["step"])
    for tag, value in scalars(record).items():
      self._writer.add_scalar(tag, value, step)
    self._writer.flush()  # records are rare (every --log_every_steps): keep the files current

  def write_config(self, config_json: str, step: int) -> None:
    self._writer.add_text("config", config_markdown(config_json), step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
