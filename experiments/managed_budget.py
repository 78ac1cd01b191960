"""Quality at a memory budget: --id_mapping=managed (LRU, LFU) against hash, one command.

  python experiments/managed_budget.py [--workdir=runs/managed_budget] [--data_dir=data]
                                       [--seeds=0,1,2] [--fractions=0.25,0.5,1]

On built-in data with a long tail of ids (--synthetic_tail; one data set, --data_seed),
count the distinct raw ids of each table in the training split (the preprocessed raw
data), then for every seed s (--seed=s: initial values and batch order; the same data and
test split, so arms compare pairwise) train, one `python main.py` run each,
  - --id_mapping=vocabulary: every id its own row, the ceiling;
  - per fraction f of the distinct ids (per table, at least 1): --id_mapping=managed
    with --managed_capacity=f x distinct under --eviction=lru and lfu, and
    --id_mapping=hash with the same rows (--hash_rows = capacity + 1, the unknown row).
Every run's flags are in WORKDIR/seed<s>/<arm>/arm.flags (rerun one alone with
`python main.py --flagfile=...`); running the command again skips finished runs. Writes
WORKDIR/results.json, results.md (test AUC mean and spread over seeds, and the mean
difference to the vocabulary run of the same seed) and managed_budget.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import comparison  # experiments/comparison.py, beside this script

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "main.py"
MAPPINGS = ("hash", "lru", "lfu")  # the budgeted arms, beside the vocabulary ceiling
LABELS = {"vocabulary": "vocabulary", "hash": "hash", "lru": "managed LRU", "lfu": "managed LFU"}
COLOURS = {"vocabulary": "black", "hash": "tab:red", "lru": "tab:blue", "lfu": "tab:green"}
# A small model and one epoch: about 10-20 s per run on 2 CPU cores, 30 runs with 3 seeds.
MODEL = (
  "--embedding_dim=8",
  "--bottom_mlp=32,8",
  "--top_mlp=32,1",
  "--optimizer=sgd",
  "--learning_rate=0.5",
  "--num_epochs=1",
  "--log_every_steps=50",
  "--checkpoint_every_steps=0",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", default="runs/managed_budget", help="one sub-directory per run")
  p.add_argument("--data_dir", default="data", help="root of datasets (default data)")
  p.add_argument("--seeds", default="0,1,2", help="model seeds (--seed; default 0,1,2)")
  p.add_argument("--data_seed", type=int, default=0, help="--synthetic_seed (default 0)")
  p.add_argument("--fractions", default="0.25,0.5,1", help="capacities / distinct ids per table")
  p.add_argument("--synthetic_rows", type=int, default=60_000, help="built-in data rows")
  p.add_argument("--synthetic_tail", type=float, default=0.5, help="share of rare tail ids")
  p.add_argument("--batch_size", type=int, default=256, help="examples per step (default 256)")
  args = p.parse_args(argv)
  try:
    args.seed_list = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    args.fraction_list = sorted({float(f) for f in args.fractions.split(",") if f.strip()})
  except ValueError:
    p.error(f"--seeds={args.seeds} / --fractions={args.fractions}: comma-separated numbers")
  if not args.seed_list or min(args.seed_list) < 0:
    p.error(f"--seeds={args.seeds}: give seeds >= 0")
  if not args.fraction_list or min(args.fraction_list) <= 0:
    p.error(f"--fractions={args.fractions}: give fractions > 0")
  if not 0 < args.synthetic_tail < 1:
    p.error(f"--synthetic_tail={args.synthetic_tail}: must be in (0, 1)")
  return args


def data_flags(args: argparse.Namespace) -> list[str]:
  return [
    "--dataset=synthetic",
    f"--data_dir={args.data_dir}",
    f"--synthetic_rows={args.synthetic_rows}",
    f"--synthetic_seed={args.data_seed}",
    f"--synthetic_tail={args.synthetic_tail:g}",
  ]


def distinct_ids(args: argparse.Namespace) -> tuple[list[str], list[int]]:
  """Prepares the data (raw and vocabulary, main.py's own code); distinct training ids."""
  import numpy as np

  from dlrm_jax.config import Config
  from dlrm_jax.data.datasets import resolve_dataset
  from dlrm_jax.data.store import open_split

  base = dict(
    dataset="synthetic",
    data_dir=args.data_dir,
    synthetic_rows=args.synthetic_rows,
    synthetic_seed=args.data_seed,
    synthetic_tail=args.synthetic_tail,
  )
  resolve_dataset(Config(**base), progress=False)
  raw, meta = resolve_dataset(Config(**base, id_mapping="hash"), progress=False)
  sparse = open_split(raw, "train").sparse
  return list(meta["sparse_names"]), [int(np.unique(sparse[:, t]).size) for t in range(26)]


def arms(args, names: list[str], distinct: list[int]) -> list[tuple[str, dict, list]]:
  """(arm name, its facts, its id-mapping flags), the same for every seed."""
  out = [("vocabulary", {"mapping": "vocabulary", "fraction": None}, ["--id_mapping=vocabulary"])]
  for f in args.fraction_list:
    capacity = [max(1, round(f * d)) for d in distinct]

    def per_table(extra: int, capacity=capacity) -> str:
      return ",".join(f"{n}:{c + extra}" for n, c in zip(names, capacity, strict=True))

    facts = {"fraction": f, "rows": sum(capacity) + len(capacity)}
    out.append(
      (
        f"hash_{f:g}",
        {"mapping": "hash", **facts},
        ["--id_mapping=hash", f"--hash_rows={per_table(1)}"],
      )
    )
    for policy in ("lru", "lfu"):
      flags = ["--id_mapping=managed", f"--eviction={policy}", f"--managed_capacity={per_table(0)}"]
      out.append((f"{policy}_{f:g}", {"mapping": policy, **facts}, flags))
  return out


def run_arm(flags: list[str], armdir: str) -> tuple[float | None, float]:
  """Runs (or skips, when finished) one main.py; returns (test AUC, wall seconds)."""
  metrics = os.path.join(armdir, "metrics.jsonl")
  start = time.monotonic()
  if not comparison.is_finished(comparison.read_metrics(metrics)):
    os.makedirs(armdir, exist_ok=True)
    flagfile = os.path.join(armdir, "arm.flags")
    Path(flagfile).write_text("\n".join(flags) + "\n")
    with open(os.path.join(armdir, "main.log"), "a") as log:
      cmd = [sys.executable, str(MAIN), f"--flagfile={flagfile}", "--noprogress"]
      rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
      print(f"  failed (exit {rc}); see {armdir}/main.log", file=sys.stderr)
  test = comparison.final_evaluation(comparison.read_metrics(metrics), "test") or {}
  return test.get("auc"), time.monotonic() - start


def summarise(runs: list[dict], args: argparse.Namespace) -> list[dict]:
  """One row per (mapping, fraction): test AUC mean, spread, and paired gap to vocabulary."""
  ceiling = {r["seed"]: r["test_auc"] for r in runs if r["mapping"] == "vocabulary"}
  keys = [("vocabulary", None)] + [(m, f) for f in args.fraction_list for m in MAPPINGS]
  rows = []
  for mapping, fraction in keys:
    got = [r for r in runs if r["mapping"] == mapping and r["fraction"] == fraction]
    aucs = [r["test_auc"] for r in got if r["test_auc"] is not None]
    gaps = [
      r["test_auc"] - ceiling[r["seed"]]
      for r in got
      if r["test_auc"] is not None and ceiling.get(r["seed"]) is not None
    ]
    rows.append(
      {
        "mapping": mapping,
        "fraction": fraction,
        "seeds": len(aucs),
        "test_auc_mean": statistics.mean(aucs) if aucs else None,
        "test_auc_std": statistics.stdev(aucs) if len(aucs) > 1 else None,
        "gap_to_vocabulary_mean": statistics.mean(gaps) if gaps else None,
        "gap_to_vocabulary_std": statistics.stdev(gaps) if len(gaps) > 1 else None,
        "rows": statistics.mean([r["rows"] for r in got]) if got and fraction else None,
      }
    )
  return rows


def _fmt(value, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def markdown(rows: list[dict], args: argparse.Namespace, distinct: list[int]) -> str:
  lines = [
    f"# Quality at a memory budget: {args.synthetic_rows:,} rows of built-in data, "
    f"--synthetic_tail={args.synthetic_tail:g}, seeds {args.seeds}",
    "",
    f"Capacity: a fraction of each table's distinct training ids ({sum(distinct):,} in all "
    "tables); hash has the same rows (capacity + 1). AUC: test split, mean ± standard deviation "
    "over seeds; gap: AUC minus the vocabulary run's of the same seed (mean ± sd).",
    "",
    "| mapping | capacity / distinct | rows (all tables) | test AUC | gap to vocabulary |",
    "|---|---:|---:|---:|---:|",
  ]
  for r in rows:
    frac = "all ids" if r["fraction"] is None else f"{r['fraction']:g}x"
    auc = f"{_fmt(r['test_auc_mean'], '.4f')} ± {_fmt(r['test_auc_std'], '.4f')}"
    gap = f"{_fmt(r['gap_to_vocabulary_mean'], '+.4f')} ± {_fmt(r['gap_to_vocabulary_std'], '.4f')}"
    gap = "" if r["mapping"] == "vocabulary" else gap
    rows_s = _fmt(r["rows"], ",.0f") if r["rows"] else "one per id"
    lines.append(f"| {LABELS[r['mapping']]} | {frac} | {rows_s} | {auc} | {gap} |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
  """Left: test AUC against capacity (sd over seeds), vocabulary as a line and band. Right:
  the paired gap to the vocabulary run of the same seed (mean and sd over seeds)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  vocab = next(r for r in rows if r["mapping"] == "vocabulary")
  if vocab["test_auc_mean"] is not None:
    mean, sd = vocab["test_auc_mean"], vocab["test_auc_std"] or 0.0
    left.axhline(mean, color=COLOURS["vocabulary"], ls="--", lw=1.2, label="vocabulary")
    left.axhspan(mean - sd, mean + sd, color="grey", alpha=0.2)
  right.axhline(0.0, color=COLOURS["vocabulary"], ls="--", lw=1.2, label="vocabulary")
  for i, mapping in enumerate(MAPPINGS):
    got = [r for r in rows if r["mapping"] == mapping and r["test_auc_mean"] is not None]
    xs = [r["fraction"] * (1 + 0.03 * (i - 1)) for r in got]  # side by side, not on top
    style = dict(marker="o", ms=4, capsize=3, color=COLOURS[mapping], label=LABELS[mapping])
    err = [r["test_auc_std"] or 0.0 for r in got]
    left.errorbar(xs, [r["test_auc_mean"] for r in got], yerr=err, **style)
    gaps = [r["gap_to_vocabulary_mean"] for r in got]
    if None not in gaps:
      err = [r["gap_to_vocabulary_std"] or 0.0 for r in got]
      right.errorbar(xs, gaps, yerr=err, **style)
  fractions = sorted({r["fraction"] for r in rows if r["fraction"] is not None})
  for ax, ylabel in (
    (left, "test AUC (mean ± sd over seeds)"),
    (right, "test AUC - vocabulary's, same seed (mean ± sd)"),
  ):
    ax.set_xscale("log", base=2)
    ax.set_xticks(fractions, [f"{f:g}x" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("capacity / distinct training ids per table (hash rows = capacity + 1)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  started = time.monotonic()
  os.makedirs(args.workdir, exist_ok=True)
  runs = []
  try:
    names, distinct = distinct_ids(args)
  except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{sum(distinct):,} distinct training ids in all tables: {distinct}", flush=True)
  for seed in args.seed_list:
    print(f"seed {seed}", flush=True)
    common = [
      *data_flags(args),
      f"--seed={seed}",
      *MODEL,
      f"--batch_size={args.batch_size}",
      "--eval_batch_size=4096",
    ]
    for name, facts, flags in arms(args, names, distinct):
      armdir = os.path.join(args.workdir, f"seed{seed}", name)
      auc, wall = run_arm([*common, *flags, f"--workdir={armdir}"], armdir)
      print(f"  {name}: test AUC {_fmt(auc, '.4f')} ({wall:.0f} s)", flush=True)
      runs.append({"seed": seed, "arm": name, **facts, "test_auc": auc, "workdir": armdir})
  rows = summarise(runs, args)
  settings = {k: v for k, v in vars(args).items() if k not in ("seed_list", "fraction_list")}
  settings["model_flags"] = list(MODEL)
  result = {"settings": settings, "distinct_ids": distinct, "summary": rows, "runs": runs}
  Path(args.workdir, "results.json").write_text(json.dumps(result, indent=1) + "\n")
  text = markdown(rows, args, distinct)
  Path(args.workdir, "results.md").write_text(text + "\n![plot](managed_budget.png)\n")
  plot(rows, os.path.join(args.workdir, "managed_budget.png"), text.splitlines()[0].lstrip("# "))
  print(text)
  print(
    f"{len(runs)} runs in {time.monotonic() - started:.0f} s; {args.workdir}/results.json, "
    "results.md, managed_budget.png"
  )
  return 0 if all(r["test_auc"] is not None for r in runs) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
