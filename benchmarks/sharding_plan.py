"""Prints per-device table memory and exchange bytes per step for Criteo Kaggle / Terabyte plans."""

from __future__ import annotations

import argparse

from dlrm_jax.optim.sparse import OPTIMIZERS, SparseOptimizer
from dlrm_jax.sharding.exchange import exchange_bytes
from dlrm_jax.sharding.planner import plan_layout
from dlrm_jax.sharding.specs import table_specs

# The reference's table sizes (dlrm_s_pytorch.py): Kaggle with no id limit,
# Terabyte with ids % 10M; dims and batches of the reference configs.
# fmt: off
DATASETS = {
    "kaggle": dict(dim=16, batch=128, rows=[
        1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
        14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]),
    "terabyte": dict(dim=64, batch=2048, rows=[
        9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829, 10, 2208,
        11156, 122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101, 36]),
}
# fmt: on
MESHES = {8: [(1, 8)], 64: [(1, 64), (8, 8)]}
PLANS = ("auto", "table", "row", "column", "replicated")


def mib(b: float) -> str:
  return f"{b / 2**20:,.1f}"


def rows_for(dataset: str, devices: int, slot_floats: int, batch: int | None):
  cfg = DATASETS[dataset]
  specs = table_specs([f"C{i + 1}" for i in range(26)], cfg["rows"], cfg["dim"])
  batch = batch or cfg["batch"] * devices // 8  # the reference batch per 8 devices
  for data, model in MESHES[devices]:
    for plan in PLANS:
      if plan == "column" and cfg["dim"] % model:
        yield (dataset, devices, f"{data}x{model}", plan, batch) + ("n/a (dim % model)",)
        continue
      layout = plan_layout(specs, model, default=plan, slot_floats_per_row=slot_floats)
      per_device = [
        sum(layout.table_bytes_per_device(i, slot_floats)[k] for i in range(len(specs)))
        for k in range(model)
      ]
      mean = sum(per_device) / model
      ex = exchange_bytes(layout, data, batch)
      mix = (
        "".join(f"{layout.features(p).__len__()}{p[0]}" for p in PLANS[1:] if layout.features(p))
        if plan == "auto"
        else ""
      )
      yield (
        dataset,
        devices,
        f"{data}x{model}",
        plan + (f" ({mix})" if mix else ""),
        batch,
        mib(max(per_device)),
        f"{max(per_device) / mean:.3f}",
        mib(ex["forward"] + ex["backward"] + ex["ids"]),
        mib(ex["backward_data"]),
        mib(ex["minimum"]),
        f"{ex['total'] / ex['minimum']:.1f}",
      )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument(
    "--optimizer",
    default="sgd",
    choices=OPTIMIZERS,
    help="table optimizer whose state counts as memory (default sgd, the reference's)",
  )
  parser.add_argument(
    "--batch",
    type=int,
    default=None,
    help="global batch (default: the reference batch per 8 devices)",
  )
  args = parser.parse_args()
  header = (
    "dataset",
    "devices",
    "mesh",
    "plan",
    "batch",
    "max MiB/dev",
    "max/mean",
    "model-axis MiB",
    "data-axis MiB",
    "minimum MiB",
    "total/min",
  )
  rows = [header]
  for dataset in DATASETS:
    for devices in MESHES:
      slots = SparseOptimizer(args.optimizer, 1.0).slot_floats_per_row(DATASETS[dataset]["dim"])
      rows.extend(rows_for(dataset, devices, slots, args.batch))
  widths = [max(len(str(r[i])) for r in rows if len(r) > i) for i in range(len(header))]
  print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for r in rows[1:]:
    # n/a rows are short: zip stops at their last cell.
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) + " |")
  print(
    f"\noptimizer: {args.optimizer}. max MiB/dev: tables + optimizer slots on the fullest"
    " device (buffer padding excluded);"
    "\nmax/mean: its imbalance. model-axis / data-axis MiB: bytes all devices send per step"
    "\n(ids, forward and backward exchange over `model`; routed row gradients over `data`)."
    "\nminimum: the embedding rows the batch needs, batch x 26 x dim x 4 B, each sent once."
  )


if __name__ == "__main__":
  main()
