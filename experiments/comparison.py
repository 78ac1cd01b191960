"""Reading a run's metrics.jsonl back into curves and one summary row per comparison arm."""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

# The keys every arm of results.json carries (None where a run did not produce the figure).
ARM_KEYS = (
  "model",
  "optimizer",
  "learning_rate",
  "params",
  "train_accuracy",
  "validation_accuracy",
  "test_auc",
  "test_logloss",
  "test_accuracy",
  "samples_per_sec",
  "wall_s",
)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl; [] if absent. A line cut short by a kill is skipped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def training_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Training log lines (those with a loss), by step."""
  return sorted((r for r in records if "loss" in r and "split" not in r), key=lambda r: r["step"])


def evaluations(records: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
  """Evaluation records of one split, by step."""
  return sorted((r for r in records if r.get("split") == split), key=lambda r: r["step"])


def final_evaluation(records: list[dict[str, Any]], split: str) -> dict[str, Any] | None:
  """The last evaluation of ``split`` (the end-of-training one), or None."""
  found = evaluations(records, split)
  return found[-1] if found else None


def is_finished(records: list[dict[str, Any]]) -> bool:
  """main.py writes the test evaluation only after the last training step."""
  return final_evaluation(records, "test") is not None


def parameter_count(records: list[dict[str, Any]]) -> int | None:
  """The "total" of the ``{"step": 0, "parameters": {...}}`` line, if the run wrote one."""
  for r in records:
    params = r.get("parameters")
    if isinstance(params, dict) and "total" in params:
      return int(params["total"])
  return None


def train_accuracy_last_fraction(
  records: list[dict[str, Any]], total_steps: int, fraction: float = 0.1
) -> float | None:
  """Mean training accuracy over the last ``fraction`` of ``total_steps`` steps.

  A training line at step s reports the mean accuracy of the steps after the
  previous line's step up to s. The window is the last ceil(fraction * total)
  steps; each line counts with the number of its steps inside the window (equal
  batches, so the mean of step means is the mean over examples). None if no line
  in the window carries "accuracy".
  """
  if total_steps <= 0:
    return None
  window_start = total_steps - math.ceil(fraction * total_steps)  # steps > this are inside
  weighted, weight, previous = 0.0, 0, 0
  for line in training_lines(records):
    step = int(line["step"])
    overlap = min(step, total_steps) - max(previous, window_start)
    acc = line.get("accuracy")
    if overlap > 0 and acc is not None:
      weighted += float(acc) * overlap
      weight += overlap
    previous = step
  return weighted / weight if weight else None


def median_samples_per_sec(records: list[dict[str, Any]]) -> float | None:
  """Median samples/s of the training lines after the first (which includes compilation)."""
  rates = [r["samples_per_sec"] for r in training_lines(records)[1:] if r.get("samples_per_sec")]
  return statistics.median(rates) if rates else None


def summarise_arm(
  records: list[dict[str, Any]], total_steps: int, *, wall_s: float | None
) -> dict[str, Any]:
  """The measured figures of one finished (or partial) run; missing ones are None."""
  val = final_evaluation(records, "validation") or {}
  test = final_evaluation(records, "test") or {}
  return {
    "params": parameter_count(records),
    "train_accuracy": train_accuracy_last_fraction(records, total_steps),
    "validation_accuracy": val.get("accuracy"),
    "validation_auc": val.get("auc"),
    "validation_logloss": val.get("logloss"),
    "test_auc": test.get("auc"),
    "test_logloss": test.get("logloss"),
    "test_accuracy": test.get("accuracy"),
    "samples_per_sec": median_samples_per_sec(records),
    "wall_s": wall_s,
    "steps": total_steps,
  }


def _fmt(value: Any, spec: str) -> str:
  if value is None:
    return "n/a"
  return format(value, spec)


def results_markdown(arms: list[dict[str, Any]], header: str) -> str:
  """results.md: ``header`` (free text), then one table row per arm."""
  lines = [
    header.rstrip(),
    "",
    "| arm | model | optimizer | lr | params | train acc (last 10%) | val acc | val AUC "
    "| test AUC | test log loss | test acc | samples/s | wall s | status |",
    "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for a in arms:
    lines.append(
      "| "
      + " | ".join(
        [
          str(a["arm"]),
          a["model"],
          a["optimizer"],
          _fmt(a["learning_rate"], "g"),
          _fmt(a["params"], ","),
          _fmt(a["train_accuracy"], ".4f"),
          _fmt(a["validation_accuracy"], ".4f"),
          _fmt(a.get("validation_auc"), ".4f"),
          _fmt(a["test_auc"], ".4f"),
          _fmt(a["test_logloss"], ".4f"),
          _fmt(a["test_accuracy"], ".4f"),
          _fmt(a["samples_per_sec"], ",.0f"),
          _fmt(a["wall_s"], ".0f"),
          a.get("status", ""),
        ]
      )
      + " |"
    )
  return "\n".join(lines) + "\n"
