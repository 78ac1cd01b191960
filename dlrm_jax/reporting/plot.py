"""curves.png from metrics.jsonl.

python -m dlrm_jax.reporting.plot WORKDIR [WORKDIR ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field


@dataclass
class Curves:
  """One run's curves, read from its metrics.jsonl."""

  name: str
  train_steps: list[int] = field(default_factory=list)
  train_loss: list[float] = field(default_factory=list)
  val_steps: list[int] = field(default_factory=list)
  val_auc: list[float] = field(default_factory=list)
  best_possible_auc: float | None = None  # validation's, on built-in data only


def read_curves(workdir: str, name: str | None = None) -> Curves:
  """Training loss and validation AUC by step from ``workdir/metrics.jsonl``."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} the --workdir of a run?")
  curves = Curves(name or os.path.basename(os.path.normpath(workdir)) or workdir)
  with open(path) as f:
    for number, line in enumerate(f, 1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e})") from None
      if record.get("split") == "validation" and record.get("auc") is not None:
        curves.val_steps.append(record["step"])
        curves.val_auc.append(record["auc"])
        if record.get("best_possible_auc") is not None:
          curves.best_possible_auc = record["best_possible_auc"]
      elif "split" not in record and record.get("loss") is not None:
        curves.train_steps.append(record["step"])
        curves.train_loss.append(record["loss"])
  return curves


# Series with fewer points than this get a marker on every point: a line alone would hide how
# few there are, and a line of one point is not drawn at all.
MARKERS_BELOW = 20


def _style(n: int) -> dict:
  return {"marker": "o", "markersize": 4} if n < MARKERS_BELOW else {}


def _too_short(runs: list[Curves], steps_of) -> str | None:
  """The note for runs with fewer than two points in a panel (no curve to draw), or None."""
  short = [f"{r.name}: {len(steps_of(r))} point(s)" for r in runs if len(steps_of(r)) < 2]
  if not short:
    return None
  return "run too short to have a curve\n" + "\n".join(short)


def figure(runs: list[Curves]):
  """The two-panel matplotlib Figure (training loss; validation AUC) of ``runs``."""
  from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe headless

  fig = Figure(figsize=(11, 4), layout="constrained")
  loss_ax, auc_ax = fig.subplots(1, 2)
  for i, run in enumerate(runs):
    color = f"C{i % 10}"
    loss_ax.plot(
      run.train_steps, run.train_loss, color=color, label=run.name, **_style(len(run.train_steps))
    )
    auc_ax.plot(
      run.val_steps, run.val_auc, color=color, label=run.name, **_style(len(run.val_steps))
    )
    if run.best_possible_auc is not None:
      auc_ax.axhline(
        run.best_possible_auc,
        color=color,
        linestyle="--",
        linewidth=1,
        label=f"{run.name}: best possible {run.best_possible_auc:.4f}",
      )
  loss_ax.set(xlabel="step", ylabel="training loss (log loss)", title="training loss")
  auc_ax.set(xlabel="step", ylabel="AUC", title="validation AUC")
  panels = ((loss_ax, lambda r: r.train_steps), (auc_ax, lambda r: r.val_steps))
  for ax, steps_of in panels:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize="small")
    note = _too_short(runs, steps_of)
    if note:
      # Where the curve would be; a short run logs too rarely (--log_every_steps) to draw one.
      ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="0.4")
  return fig


def draw(runs: list[Curves], out: str) -> str:
  """Writes a two-panel PNG (training loss; validation AUC) to ``out``; returns ``out``."""
  fig = figure(runs)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=100)
  return out


def write_curves(workdirs: list[str], out: str | None = None) -> str:
  """Plots the runs in ``workdirs`` side by side; by default to WORKDIR/curves.png for one run."""
  runs = [read_curves(w) for w in workdirs]
  if out is None:
    out = os.path.join(workdirs[0], "curves.png") if len(workdirs) == 1 else "curves.png"
  return draw(runs, out)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m dlrm_jax.reporting.plot",
    description="Training loss and validation AUC against step, from each WORKDIR's "
    "metrics.jsonl, several runs side by side.",
  )
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="a run's --workdir")
  parser.add_argument(
    "--out",
    default=None,
    help="the PNG to write (default: WORKDIR/curves.png for one run, ./curves.png for several)",
  )
  args = parser.parse_args(argv)
  try:
    path = write_curves(args.workdirs, args.out)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
