"""Prints test AUC of --shuffle=rows against --shuffle=blocks over 3 seeds, on built-in data and on
../shared/criteo_samples (real Kaggle rows; skipped when absent): does the block shuffle cost AUC?

  python benchmarks/shuffle_auc_parity.py [--workdir=/tmp/shuffle_parity] [--seeds=0,1,2]
                                         [--datasets=builtin,samples] [--samples=PATH]

Each run is one `python main.py` (printed) with a small DLRM, one epoch, blocks scaled to the
data so that an epoch has about 80 blocks and a buffer of 4 (at Criteo Kaggle's 45M rows and the
default 262,144-row blocks an epoch has 172 blocks).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import comparison  # noqa: E402  experiments/comparison.py reads metrics.jsonl back

SAMPLES = REPO.parent / "shared" / "criteo_samples" / "kaggle_train_rows.tsv"  # beside the repo
MODEL = [
  "--embedding_dim=8",
  "--bottom_mlp=32,8",
  "--top_mlp=32,1",
  "--optimizer=sgd",
  "--num_epochs=1",
  "--eval_batch_size=4096",
  "--eval_every_steps=0",
  "--checkpoint_every_steps=0",
  "--noprogress",
]
# (name, data flags, batch, learning rate, block rows): ~80 blocks of each training split.
DATASETS = (
  ("builtin", ["--dataset=synthetic", "--synthetic_rows=200000"], 256, 0.5, 2048),
  ("samples", ["--dataset=kaggle"], 128, 0.1, 256),
)


def test_auc(workdir: Path, flags: list[str]) -> float:
  args = [sys.executable, str(REPO / "main.py"), f"--workdir={workdir}", *flags]
  print("  " + " ".join(args[1:]), flush=True)
  subprocess.run(args, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
  final = comparison.final_evaluation(
    comparison.read_metrics(str(workdir / "metrics.jsonl")), "test"
  )
  return float(final["auc"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", default="/tmp/shuffle_parity", help="runs and data go here")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
  parser.add_argument(
    "--datasets", default="builtin,samples", help="builtin (200k rows), samples (real Kaggle rows)"
  )
  parser.add_argument("--samples", default=str(SAMPLES), help="the real rows' file")
  args = parser.parse_args()
  samples = Path(args.samples)
  root = Path(args.workdir)
  seeds = [int(s) for s in args.seeds.split(",")]
  for name, data, batch, lr, block_rows in DATASETS:
    if name not in args.datasets.split(","):
      continue
    data_dir = root / "data"
    if "--dataset=kaggle" in data:
      if not samples.exists():
        print(f"{name}: skipped, {samples} absent")
        continue
      (data_dir / "criteo_kaggle").mkdir(parents=True, exist_ok=True)
      target = data_dir / "criteo_kaggle" / "train.txt"
      if not target.exists():
        shutil.copyfile(samples, target)
    print(f"{name}: batch {batch}, learning rate {lr}, blocks of {block_rows} rows, 4 per buffer")
    aucs: dict[str, list[float]] = {"rows": [], "blocks": []}
    for seed in seeds:
      for shuffle in aucs:
        flags = [*data, f"--data_dir={data_dir}", *MODEL, f"--batch_size={batch}"]
        flags += [f"--learning_rate={lr}", f"--seed={seed}", f"--shuffle={shuffle}"]
        flags += [f"--shuffle_block_rows={block_rows}", "--shuffle_buffer_blocks=4"]
        workdir = root / f"{name}_{shuffle}_{seed}"
        shutil.rmtree(workdir, ignore_errors=True)
        aucs[shuffle].append(test_auc(workdir, flags))
    for shuffle, values in aucs.items():
      spread = statistics.stdev(values) if len(values) > 1 else 0.0
      print(
        f"  {shuffle:6s}: test AUC mean {statistics.mean(values):.4f} (sd {spread:.4f}) "
        f"over seeds {seeds}: {', '.join(f'{v:.4f}' for v in values)}"
      )
    gap = statistics.mean(aucs["blocks"]) - statistics.mean(aucs["rows"])
    print(f"  blocks - rows: {gap:+.4f}", flush=True)
  print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
