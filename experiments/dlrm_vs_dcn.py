"""DLRM against DCN and DCN-V2 under SGD and Adagrad, the DLRM paper's Figure 5, in one command.

  python experiments/dlrm_vs_dcn.py [--dataset=synthetic|kaggle] [--data_dir=data]
                                    [--workdir=runs/dlrm_vs_dcn] [--arms=1,2,...]

Every arm is one `python main.py --flagfile=WORKDIR/ARM/arm.flags` run (printed, so an
arm can be rerun alone) on the same data, seed and single epoch, in its own workdir.
Run the same command again to resume: finished arms are skipped, an interrupted arm
resumes from its checkpoints. Writes WORKDIR/results.json, results.md and accuracy.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import comparison  # experiments/comparison.py, beside this script

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "main.py"
POLL_S = 2.0
REPORT_EVERY_S = 30.0


@dataclasses.dataclass(frozen=True)
class Arm:
  number: int
  model: str  # dlrm, dcn, dcnv2, dlrm_nns
  optimizer: str  # sgd, adagrad
  learning_rate: float  # the paper's: SGD 0.1 (reference Kaggle script), Adagrad 0.01

  @property
  def name(self) -> str:
    return f"{self.number}_{self.model}_{self.optimizer}"


ARMS = (
  Arm(1, "dlrm", "sgd", 0.1),
  Arm(2, "dcn", "sgd", 0.1),
  Arm(3, "dlrm", "adagrad", 0.01),
  Arm(4, "dcn", "adagrad", 0.01),
  Arm(5, "dcnv2", "sgd", 0.1),
  Arm(6, "dcnv2", "adagrad", 0.01),
  Arm(7, "dlrm_nns", "sgd", 0.1),
)

# Architectures. "full": the reference Kaggle DLRM (dim 16) and the paper's DCN (6 cross
# layers, deep 512-256); DCN-V2 as MLPerf (3 layers) but full rank, since MLPerf's rank 512
# exceeds the 27 x 16 = 432-wide input here. "smoke": seconds-long runs for the tests.
SIZES = {
  "full": dict(
    embedding_dim=16,
    bottom_mlp="512,256,64,16",
    top_mlp="512,256,1",
    dcn_num_layers=6,
    dcn_deep_mlp="512,256",
    dcnv2_num_layers=3,
    dcn_low_rank_dim=0,
    embedding_mlp="32,16",
  ),
  "smoke": dict(
    embedding_dim=8,
    bottom_mlp="32,8",
    top_mlp="32,1",
    dcn_num_layers=2,
    dcn_deep_mlp="32,16",
    dcnv2_num_layers=2,
    dcn_low_rank_dim=0,
    embedding_mlp="8",
  ),
}

MODEL_LABELS = {"dlrm": "DLRM", "dcn": "DCN", "dcnv2": "DCN-V2", "dlrm_nns": "DLRM + NNs"}
COLOURS = {"dlrm": "tab:blue", "dcn": "tab:red", "dcnv2": "tab:green", "dlrm_nns": "tab:purple"}
OPTIMIZER_LABELS = {"sgd": "SGD", "adagrad": "Adagrad"}


def model_flags(model: str, size: dict) -> list[str]:
  """The flags that differ between models; everything else is shared by all arms."""
  common = [
    f"--embedding_dim={size['embedding_dim']}",
    f"--bottom_mlp={size['bottom_mlp']}",
    f"--top_mlp={size['top_mlp']}",
  ]
  if model == "dlrm":
    return common + ["--interaction=dot"]
  if model == "dlrm_nns":
    return common + ["--interaction=dot", f"--embedding_mlp={size['embedding_mlp']}"]
  if model == "dcn":
    # The paper's DCN: cross and deep outputs concatenated straight into the logit layer.
    return common[:2] + [
      "--top_mlp=1",
      "--interaction=dcn",
      f"--dcn_num_layers={size['dcn_num_layers']}",
      f"--dcn_deep_mlp={size['dcn_deep_mlp']}",
    ]
  if model == "dcnv2":
    return common + [
      "--interaction=dcnv2",
      f"--dcn_num_layers={size['dcnv2_num_layers']}",
      f"--dcn_low_rank_dim={size['dcn_low_rank_dim']}",
    ]
  raise ValueError(f"unknown model {model!r}")


def arm_flags(arm: Arm, args: argparse.Namespace, total_steps: int, armdir: str) -> list[str]:
  """The complete flag list of one arm (its arm.flags file)."""
  size = SIZES["smoke" if args.smoke else "full"]
  data = [f"--dataset={args.dataset}", f"--data_dir={args.data_dir}"]
  if args.dataset == "synthetic":
    data.append(f"--synthetic_rows={args.synthetic_rows}")
  else:  # the reference Kaggle preprocessing, as experiments/kaggle.flags
    data += ["--max_ind_range=0", "--data_sub_sample_rate=0"]
  optimizer = [f"--optimizer={arm.optimizer}", f"--learning_rate={arm.learning_rate:g}"]
  if arm.optimizer == "adagrad":
    optimizer.append("--adagrad_eps=1e-10")  # torch.optim.Adagrad's, as the reference
  return [
    *data,
    f"--seed={args.seed}",
    *model_flags(arm.model, size),
    *optimizer,
    f"--batch_size={args.batch_size}",
    f"--eval_batch_size={args.eval_batch_size}",
    "--num_epochs=1",
    # Rounded up, so that no periodic evaluation falls a few steps before the final one.
    f"--eval_every_steps={-(-total_steps // args.evals_per_epoch)}",
    f"--log_every_steps={max(1, total_steps // args.log_lines_per_epoch)}",
    f"--checkpoint_every_steps={args.checkpoint_every_steps}",
    f"--workdir={armdir}",
  ]


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--dataset", choices=("synthetic", "kaggle"), default="synthetic")
  p.add_argument("--data_dir", default="data", help="root of datasets (default data)")
  p.add_argument("--workdir", default="runs/dlrm_vs_dcn", help="one sub-directory per arm")
  p.add_argument("--arms", default="1,2,3,4,5,6,7", help="arm numbers to run (default all)")
  p.add_argument("--synthetic_rows", type=int, default=400_000, help="built-in data rows")
  p.add_argument("--batch_size", type=int, default=128, help="the paper's 128")
  p.add_argument("--eval_batch_size", type=int, default=0, help="0: 8192 (kaggle 16384)")
  p.add_argument("--seed", type=int, default=0, help="the same for every arm")
  p.add_argument("--evals_per_epoch", type=int, default=8, help="validation points per curve")
  p.add_argument("--log_lines_per_epoch", type=int, default=50, help="training points")
  p.add_argument(
    "--checkpoint_every_steps", type=int, default=0, help="0: at each validation and the end"
  )
  p.add_argument("--smoke", action="store_true", help="tiny models and data (tests)")
  args = p.parse_args(argv)
  if args.smoke:  # seconds per arm: 66 steps, 3 validations, few checkpoints
    args.synthetic_rows, args.batch_size = 20_000, 256
    args.evals_per_epoch, args.log_lines_per_epoch = 3, 10
  if not args.eval_batch_size:
    args.eval_batch_size = 16384 if args.dataset == "kaggle" else 8192
  if args.dataset == "kaggle" and args.checkpoint_every_steps == 0:
    args.checkpoint_every_steps = 20_000  # as experiments/kaggle.flags: an epoch is 307k steps
  try:
    numbers = sorted({int(n) for n in args.arms.split(",") if n.strip()})
  except ValueError:
    p.error(f"--arms={args.arms}: expected comma-separated arm numbers 1-{len(ARMS)}")
  unknown = [n for n in numbers if not 1 <= n <= len(ARMS)]
  if unknown or not numbers:
    p.error(f"--arms={args.arms}: arm numbers are 1-{len(ARMS)}")
  args.selected = [ARMS[n - 1] for n in numbers]
  for name in ("batch_size", "evals_per_epoch", "log_lines_per_epoch", "synthetic_rows"):
    if getattr(args, name) < 1:
      p.error(f"--{name}={getattr(args, name)}: must be >= 1")
  return args


def prepare_data(args: argparse.Namespace) -> int:
  """Generates / preprocesses the data once (main.py's own code); returns steps per epoch."""
  from dlrm_jax.config import Config
  from dlrm_jax.data.datasets import resolve_dataset

  config = Config(
    dataset=args.dataset,
    data_dir=args.data_dir,
    synthetic_rows=args.synthetic_rows,
    synthetic_seed=0,
    max_ind_range=0,
    data_sub_sample_rate=0.0,
  )
  _, metadata = resolve_dataset(config, progress=True)
  return metadata["num_rows"]["train"] // args.batch_size  # the loader drops the last partial


def read_flagfile(path: str) -> list[str]:
  with open(path) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def command_of(flagfile: str) -> str:
  main = os.path.relpath(MAIN)
  return f"python {shlex.quote(main)} --flagfile={shlex.quote(flagfile)}"


def read_state(armdir: str) -> dict:
  path = os.path.join(armdir, "arm.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"runs": []}


def write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


def fmt_time(seconds: float | None) -> str:
  if seconds is None:
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 60}:{seconds % 60:02d}"


class Eta:
  """Time left across arms: the current arm by its step rate, later arms as the mean arm so far."""

  def __init__(self, pending: int):
    self.pending = pending  # arms not started yet, the current one excluded
    self.walls: list[float] = []

  def estimate(
    self, elapsed: float, step: int, total: int, rate: float | None
  ) -> tuple[float | None, float | None]:
    """(seconds left in this arm, seconds left in all); rate: steps/s since training began."""
    if not rate:
      return None, None
    left_here = (total - step) / rate
    per_arm = sum(self.walls) / len(self.walls) if self.walls else elapsed + left_here
    return left_here, left_here + self.pending * per_arm


def run_arm(arm: Arm, index: str, flagfile: str, armdir: str, total_steps: int, eta: Eta):
  """Runs main.py for one arm, printing progress; returns (returncode, wall seconds)."""
  log_path = os.path.join(armdir, "main.log")
  metrics_path = os.path.join(armdir, "metrics.jsonl")
  start = time.monotonic()
  last_report, seen_evals = start, 0
  first: tuple[float, int] | None = None  # (time, step) of the first training line seen
  with open(log_path, "a") as log:
    proc = subprocess.Popen(
      [sys.executable, str(MAIN), f"--flagfile={flagfile}", "--noprogress"],
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    try:
      while proc.poll() is None:
        time.sleep(POLL_S)
        records = comparison.read_metrics(metrics_path)
        vals = comparison.evaluations(records, "validation")
        now = time.monotonic()
        if len(vals) == seen_evals and now - last_report < REPORT_EVERY_S:
          continue
        seen_evals, last_report = len(vals), now
        lines = comparison.training_lines(records)
        step = lines[-1]["step"] if lines else 0
        if step and first is None:
          first = (now, step)  # the rate counts from here: start-up and compilation excluded
        rate = (step - first[1]) / (now - first[0]) if first and step > first[1] else None
        left_here, left_all = eta.estimate(now - start, step, total_steps, rate)
        val = f"  validation accuracy {vals[-1]['accuracy']:.4f}" if vals else ""
        print(
          f"[{index} {arm.model} {arm.optimizer}] step {step}/{total_steps}{val}  "
          f"arm ETA {fmt_time(left_here)}  all arms ETA {fmt_time(left_all)}",
          flush=True,
        )
    except (KeyboardInterrupt, Interrupted) as e:
      # Ctrl-C in a terminal reaches main.py too; a SIGTERM sent to this script alone is
      # passed on. main.py's first signal saves a checkpoint and exits: give it time.
      if isinstance(e, Interrupted):
        proc.send_signal(signal.SIGTERM)
      _wait_or_stop(proc)
      raise
    finally:
      if proc.poll() is None:
        proc.terminate()
        proc.wait()
      # Every main.py process counts towards the arm's wall time, interrupted ones too.
      wall = time.monotonic() - start
      state = read_state(armdir)
      state["runs"].append({"returncode": proc.returncode, "wall_s": wall})
      write_json(os.path.join(armdir, "arm.json"), state)
  return proc.returncode, wall


def log_tail(armdir: str, lines: int = 15) -> str:
  path = os.path.join(armdir, "main.log")
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    return "".join(f.readlines()[-lines:])


class Interrupted(Exception):
  """This script received SIGTERM."""


def _on_sigterm(signum, frame):
  raise Interrupted()


def _wait_or_stop(proc: subprocess.Popen) -> None:
  """Waits for an interrupted main.py to save and exit; signals it (again) if it does not."""
  try:
    proc.wait(timeout=60)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
  except (KeyboardInterrupt, Interrupted):  # asked twice: stop now
    proc.kill()


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  try:
    return _compare(args)
  finally:
    signal.signal(signal.SIGTERM, previous)


def _compare(args: argparse.Namespace) -> int:
  started = time.monotonic()
  os.makedirs(args.workdir, exist_ok=True)
  try:
    total_steps = prepare_data(args)
  except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{len(args.selected)} arms, one epoch of {total_steps} steps each, under {args.workdir}")

  plan = []
  for arm in args.selected:
    armdir = os.path.join(args.workdir, arm.name)
    flagfile = os.path.join(armdir, "arm.flags")
    flags = arm_flags(arm, args, total_steps, armdir)
    if os.path.exists(flagfile) and read_flagfile(flagfile) != flags:
      old = set(read_flagfile(flagfile))
      changed = [f for f in flags if f not in old]
      print(
        f"error: {armdir} was trained with other flags (now {' '.join(changed)}); give "
        f"another --workdir or remove {armdir}",
        file=sys.stderr,
      )
      return 2
    os.makedirs(armdir, exist_ok=True)
    if not os.path.exists(flagfile):
      header = (
        f"# Arm {arm.number} of experiments/dlrm_vs_dcn.py: {MODEL_LABELS[arm.model]}, "
        f"{OPTIMIZER_LABELS[arm.optimizer]} lr {arm.learning_rate:g}. Rerun alone: "
        f"{command_of(flagfile)}\n"
      )
      with open(flagfile, "w") as f:
        f.write(header + "\n".join(flags) + "\n")
    plan.append((arm, armdir, flagfile))

  todo = []
  for arm, armdir, flagfile in plan:
    state = read_state(armdir)
    if comparison.is_finished(comparison.read_metrics(os.path.join(armdir, "metrics.jsonl"))):
      print(f"arm {arm.number} ({arm.name}): finished earlier, not retrained")
    elif state.get("status") == "diverged":
      print(f"arm {arm.number} ({arm.name}): diverged earlier; remove {armdir} to retry")
    else:
      todo.append((arm, armdir, flagfile))

  eta = Eta(pending=len(todo))
  failed = []
  for i, (arm, armdir, flagfile) in enumerate(todo, 1):
    eta.pending -= 1
    print(f"arm {arm.number} ({i}/{len(todo)} to run): {command_of(flagfile)}", flush=True)
    try:
      rc, wall = run_arm(arm, f"{i}/{len(todo)}", flagfile, armdir, total_steps, eta)
    except (KeyboardInterrupt, Interrupted):
      print(
        f"\ninterrupted during arm {arm.number}; run the same command again to resume",
        file=sys.stderr,
      )
      return 130
    state = read_state(armdir)
    finished = comparison.is_finished(
      comparison.read_metrics(os.path.join(armdir, "metrics.jsonl"))
    )
    tail = log_tail(armdir)
    if finished:
      state["status"] = "done"
      eta.walls.append(wall)
      print(f"arm {arm.number} ({arm.name}) done in {fmt_time(wall)}", flush=True)
    elif rc == 3 and "non-finite" in tail:
      state["status"] = "diverged"
      print(f"arm {arm.number} ({arm.name}) diverged:\n{tail}", file=sys.stderr)
    else:
      state["status"] = "failed"
      failed.append(arm.number)
      print(
        f"arm {arm.number} ({arm.name}) failed (exit {rc}); last lines of "
        f"{armdir}/main.log:\n{tail}",
        file=sys.stderr,
      )
    write_json(os.path.join(armdir, "arm.json"), state)

  results = collect(args, plan, total_steps)
  write_results(args, results)
  print(
    f"results: {args.workdir}/results.md, results.json, accuracy.png ({len(todo)} arms trained "
    f"in {fmt_time(time.monotonic() - started)}, data preparation included)"
  )
  print(Path(args.workdir, "results.md").read_text())
  if failed:
    print(f"arms {failed} failed; rerun the same command to retry them", file=sys.stderr)
    return 1
  return 0


def collect(args: argparse.Namespace, plan, total_steps: int) -> list[dict]:
  arms = []
  for arm, armdir, flagfile in plan:
    records = comparison.read_metrics(os.path.join(armdir, "metrics.jsonl"))
    state = read_state(armdir)
    runs = state["runs"]
    wall = sum(r["wall_s"] for r in runs) if runs else None
    status = "done" if comparison.is_finished(records) else state.get("status", "not run")
    arms.append(
      {
        "arm": arm.number,
        "name": arm.name,
        "model": arm.model,
        "optimizer": arm.optimizer,
        "learning_rate": arm.learning_rate,
        "learning_rate_source": "paper",
        "status": status,
        **comparison.summarise_arm(records, total_steps, wall_s=wall),
        "command": command_of(flagfile),
        "workdir": armdir,
        "_records": records,
      }
    )
  if any(a["status"] == "done" and a["train_accuracy"] is None for a in arms):
    print(
      "note: training lines of metrics.jsonl carry no 'accuracy' (a main.py that predates it); "
      "train_accuracy is n/a and the plot shows validation only",
      file=sys.stderr,
    )
  return arms


def write_results(args: argparse.Namespace, arms: list[dict]) -> None:
  public = [{k: v for k, v in a.items() if not k.startswith("_")} for a in arms]
  settings = {
    "dataset": args.dataset,
    "synthetic_rows": args.synthetic_rows if args.dataset == "synthetic" else None,
    "batch_size": args.batch_size,
    "seed": args.seed,
    "epochs": 1,
    "smoke": args.smoke,
  }
  write_json(os.path.join(args.workdir, "results.json"), {"settings": settings, "arms": public})
  what = (
    f"{args.synthetic_rows:,} rows of built-in data" if args.dataset == "synthetic" else "Kaggle"
  )
  header = (
    f"# DLRM vs DCN: {what}, one epoch, batch {args.batch_size}, seed {args.seed}\n\n"
    "Learning rates are the paper's (no tuning). train acc: mean training accuracy over the "
    "last 10% of steps; val: the end-of-epoch validation evaluation; samples/s: median of the "
    "training log lines after the first; wall: the main.py process, start-up and evaluations "
    "included.\n\n![accuracy](accuracy.png)"
  )
  Path(args.workdir, "results.md").write_text(comparison.results_markdown(public, header))
  plot(arms, os.path.join(args.workdir, "accuracy.png"), header.splitlines()[0].lstrip("# "))


def plot(arms: list[dict], path: str, title: str) -> None:
  """The paper's Figure 5 layout: SGD and Adagrad panels; solid train, dashed validation."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.lines import Line2D

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for ax, optimizer in zip(axes, ("sgd", "adagrad"), strict=True):
    handles = []
    for a in (a for a in arms if a["optimizer"] == optimizer):
      records, colour = a["_records"], COLOURS[a["model"]]
      train = [(r["step"], r.get("accuracy")) for r in comparison.training_lines(records)]
      train = [(s, v) for s, v in train if v is not None]
      val = [(r["step"], r["accuracy"]) for r in comparison.evaluations(records, "validation")]
      if train:
        xs, ys = [s for s, _ in train], [v for _, v in train]
        ax.plot(xs, ys, "-", color=colour, lw=0.9, alpha=0.75)
      if val:
        xs, ys = [s for s, _ in val], [v for _, v in val]
        ax.plot(xs, ys, "--o", color=colour, ms=3.5, lw=1.8)
      if train or val:
        handles.append(Line2D([], [], color=colour, lw=2, label=MODEL_LABELS[a["model"]]))
    if handles:
      handles += [
        Line2D([], [], color="black", lw=0.9, label="training"),
        Line2D([], [], color="black", ls="--", marker="o", ms=3.5, lw=1.8, label="validation"),
      ]
      ax.legend(handles=handles, fontsize=8, loc="lower right")
    lrs = sorted({a["learning_rate"] for a in arms if a["optimizer"] == optimizer})
    lr_text = f", lr {', '.join(f'{lr:g}' for lr in lrs)}" if lrs else " (not run)"
    ax.set_title(f"{OPTIMIZER_LABELS[optimizer]}{lr_text}")
    ax.set_xlabel("iterations")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
