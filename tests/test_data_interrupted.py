"""Preprocessing killed with SIGKILL at random points resumes or starts over, and ends with files
byte-identical to an uninterrupted run; a killed run never leaves a metadata.json over
half-written arrays."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlrm_jax.data.store import open_split, read_metadata
from dlrm_jax.data.synthetic import generate_criteo_tsv

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from dlrm_jax.data.preprocess import preprocess_criteo
dataset, out, *raw = sys.argv[1:]
print("ready", flush=True)
preprocess_criteo(raw, out, dataset=dataset, chunk_rows=1500, progress=False,
                  max_ind_range=5000, sub_sample_rate=0.3)
print("done", flush=True)
"""


def start(dataset: str, out: pathlib.Path, raw: list[str]) -> subprocess.Popen:
  proc = subprocess.Popen(
    [sys.executable, "-c", SCRIPT, dataset, str(out), *raw],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
  )
  assert proc.stdout.readline().strip() == "ready"  # imports done: kills land in the work
  return proc


def files(out: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dataset", ["kaggle", "terabyte"])
def test_sigkill_three_times_then_identical(tmp_path, dataset):
  if dataset == "kaggle":
    raw = [str(tmp_path / "train.txt")]
    generate_criteo_tsv(raw[0], 12_000, seed=3)
  else:
    raw = [str(tmp_path / f"day_{d}") for d in range(3)]
    for d, path in enumerate(raw):
      generate_criteo_tsv(path, 4000, seed=d)
  clean = tmp_path / "clean"
  proc = start(dataset, clean, raw)
  t0 = time.perf_counter()
  assert proc.wait(timeout=300) == 0
  work = time.perf_counter() - t0
  want = files(clean)
  assert "metadata.json" in want

  out = tmp_path / "killed"
  rng = np.random.default_rng(0)
  for _ in range(3):
    proc = start(dataset, out, raw)
    time.sleep(float(rng.uniform(0.05, 0.9)) * work)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    if (out / "metadata.json").exists():  # finished before the kill: must be whole
      assert files(out) == want
      for split in ("train", "test", "validation"):
        open_split(str(out), split)
    else:
      with pytest.raises(FileNotFoundError):
        open_split(str(out), "train")
  proc = start(dataset, out, raw)
  assert proc.wait(timeout=300) == 0
  got = files(out)
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name] == want[name], name
  assert read_metadata(str(out))["num_rows"]["train"] > 0
