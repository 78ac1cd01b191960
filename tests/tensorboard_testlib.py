"""Reads a run's TensorBoard events with tensorboard's own reader, to compare with metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing import event_accumulator


def read_events(logdir) -> tuple[dict[str, dict[int, float]], dict[int, str]]:
  """({tag: {step: value}}, {step: config text}) as TensorBoard itself would show them."""
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  tags = acc.Tags()
  scalars = {}
  for tag in tags["scalars"]:
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: a step appears twice: {steps}"
    scalars[tag] = {e.step: e.value for e in events}
  texts = {}
  if "config/text_summary" in tags["tensors"]:
    for e in acc.Tensors("config/text_summary"):
      texts[e.step] = e.tensor_proto.string_val[0].decode()
  return scalars, texts


def expected_scalars(metrics_path) -> dict[str, dict[int, float]]:
  """metrics.jsonl's numbers, by the tag each should have: train/<key> or <split>/<key>."""
  out: dict[str, dict[int, float]] = {}
  for line in Path(metrics_path).read_text().splitlines():
    record = json.loads(line)
    prefix = record.get("split", "train")
    flat = {}
    for key, value in record.items():
      if isinstance(value, dict):  # {"parameters": {"dense": N, ...}} -> parameters/dense
        flat.update({f"{key}/{k}": v for k, v in value.items()})
      else:
        flat[key] = value
    for key, value in flat.items():
      if key in ("step", "split") or value is None or isinstance(value, bool):
        continue
      assert isinstance(value, int | float), (key, value)
      tag = f"{prefix}/{key}"
      assert record["step"] not in out.setdefault(tag, {}), f"{tag} twice at {record['step']}"
      out[tag][record["step"]] = value
  return out


def assert_events_match_metrics(workdir) -> dict[str, dict[int, float]]:
  """Every number of metrics.jsonl is in TensorBoard at its step (as float32), and no other."""
  workdir = Path(workdir)
  scalars, texts = read_events(workdir / "tensorboard")
  expected = expected_scalars(workdir / "metrics.jsonl")
  assert set(scalars) == set(expected), (sorted(scalars), sorted(expected))
  for tag, values in expected.items():
    assert sorted(scalars[tag]) == sorted(values), (tag, scalars[tag], values)
    for step, value in values.items():
      assert scalars[tag][step] == np.float32(value), (tag, step, scalars[tag][step], value)
  config = json.loads((workdir / "config.json").read_text())
  assert texts, "no config text in TensorBoard"
  for text in texts.values():
    lines = text.splitlines()
    assert all(line.startswith("    ") for line in lines), text  # a Markdown code block
    assert json.loads("\n".join(line[4:] for line in lines)) == config
  return scalars
