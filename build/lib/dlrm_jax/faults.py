"""Exceptions that stop a run on purpose; main.py turns each into a message and an exit code."""

from __future__ import annotations


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message says which and why."""


class CheckpointMismatch(CheckpointError):
  """A checkpoint of another model configuration; the message lists the differing fields."""


class TrainingDiverged(FloatingPointError):
  """A non-finite loss or state; the message names the step and the last good checkpoint."""


class Preempted(Exception):
  """Training stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum
