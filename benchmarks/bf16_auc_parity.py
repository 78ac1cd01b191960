"""Prints test AUC of --compute_dtype=bfloat16 against float32 per seed, beside f32's noise floor.

  python benchmarks/bf16_auc_parity.py [--flagfile=experiments/tiny.flags] [--interaction=dcnv2]
      [--synthetic_rows=100000] [--max_steps=400] [--learning_rate=0.1] [--seeds=0,1,2]
      [--data_dir=/tmp/bf16_parity/data] [--workdir=/tmp/bf16_parity] [--nofloor]

Per seed, one `python main.py` (printed) each: f32 on one device; f32 on a 2 x 1 data-parallel
mesh, the same model and batches up to rounding (each step's gradient is summed from two
halves), so its AUC difference is f32's own noise floor at this training length; bf16 on one
device. All on XLA:CPU. The options left out keep the flagfile's values; --flagfile=
experiments/kaggle_dcnv2.flags with --data_dir=DIR runs a Kaggle flagfile on DIR/criteo_kaggle.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (arm, devices, its flags): the floor arm trains data-parallel on 2 CPU devices.
ARMS = (
  ("f32", 1, ["--compute_dtype=float32"]),
  ("f32 2 devices", 2, ["--compute_dtype=float32", "--mesh_shape=2,1"]),
  ("bf16", 1, ["--compute_dtype=bfloat16"]),
)
PASSED = ("interaction", "synthetic_rows", "max_steps", "learning_rate")  # to main.py if given


def test_auc(workdir: Path, devices: int, flags: list[str]) -> float:
  """The run's final test AUC; NaN if it failed."""
  # --workdir after the flagfile, whose own --workdir it overrides.
  args = [sys.executable, str(REPO / "main.py"), *flags, f"--workdir={workdir}", "--noprogress"]
  print("  " + " ".join(args[1:]), flush=True)
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
  if proc.returncode:  # a diverged run (a NaN loss) says so on stderr's last line
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    print(f"  failed ({proc.returncode}): {last}", flush=True)
    return math.nan
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  tests = [r for r in map(json.loads, lines) if r.get("split") == "test"]
  return float(tests[-1]["auc"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--flagfile", default="experiments/tiny.flags", help="main.py's flagfile")
  parser.add_argument("--interaction", help="dot, cat, dcn or dcnv2; default: the flagfile's")
  parser.add_argument("--synthetic_rows", type=int, help="built-in data rows; default: flagfile's")
  parser.add_argument("--max_steps", type=int, help="training steps; default: the flagfile's")
  parser.add_argument("--learning_rate", type=float, help="default: the flagfile's")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated --seed values")
  parser.add_argument("--data_dir", help="datasets; default: WORKDIR/data")
  parser.add_argument("--workdir", default="/tmp/bf16_parity", help="runs go here")
  parser.add_argument(
    "--nofloor", action="store_true", help="skip the 2-device f32 arm (the noise floor)"
  )
  args = parser.parse_args()
  root = Path(args.workdir)
  data_dir = args.data_dir or str(root / "data")
  common = [f"--flagfile={args.flagfile}", f"--data_dir={data_dir}"]
  common += [f"--{k}={getattr(args, k)}" for k in PASSED if getattr(args, k) is not None]
  arms = [a for a in ARMS if not (args.nofloor and a[1] > 1)]
  seeds = [int(s) for s in args.seeds.split(",")]
  print(" ".join(common))
  aucs: dict[str, list[float]] = {name: [] for name, _, _ in arms}
  for seed in seeds:
    for name, devices, flags in arms:
      workdir = root / f"{name.replace(' ', '_')}_{seed}"
      shutil.rmtree(workdir, ignore_errors=True)
      aucs[name].append(test_auc(workdir, devices, [*common, f"--seed={seed}", *flags]))
    row = ", ".join(f"{name} {aucs[name][-1]:.4f}" for name, _, _ in arms)
    print(f"seed {seed}: {row}", flush=True)
  f32 = aucs["f32"]
  print(
    f"{'seed':>6} {'f32':>8} "
    + " ".join(f"{name + ' - f32':>20}" for name in aucs if name != "f32")
  )
  for i, seed in enumerate(seeds):
    diffs = " ".join(f"{aucs[name][i] - f32[i]:>+20.4f}" for name in aucs if name != "f32")
    print(f"{seed:>6} {f32[i]:>8.4f} {diffs}")
  for name in aucs:
    if name != "f32":
      d = [a - b for a, b in zip(aucs[name], f32, strict=True) if not math.isnan(a - b)]
      if not d:
        continue
      failed = f" ({len(seeds) - len(d)} failed)" if len(d) < len(seeds) else ""
      print(
        f"{name} - f32: mean {statistics.mean(d):+.4f}, largest |difference| "
        f"{max(map(abs, d)):.4f}, over {len(d)} seeds{failed}"
      )
  print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
