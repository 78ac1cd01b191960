"""Prints per-device table memory and exchange bytes per step for Criteo Kaggle / Terabyte plans.

With --multi_hot: the table-wise id slots per owner against the ids the owners use, at
MLPerf DLRM-DCNv2's bag sizes (experiments/mlperf_dcnv2.flags).
"""

from __future__ import annotations

import argparse

from dlrm_jax.optim.sparse import OPTIMIZERS, SparseOptimizer
from dlrm_jax.sharding import bags
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
# MLPerf DLRM-DCNv2 (experiments/mlperf_dcnv2.flags): Terabyte at --max_ind_range=40000000.
# fmt: off
MLPERF_ROWS = [
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36]
MLPERF_BAGS = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
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


def multi_hot_slots(optimizer: str) -> None:
  """Table-wise id slots per owner (what every owner gathers) against the ids it uses."""
  dim = 128
  specs = table_specs([f"C{i + 1}" for i in range(26)], MLPERF_ROWS, dim, MLPERF_BAGS)
  slots = SparseOptimizer(optimizer, 1.0).slot_floats_per_row(dim)
  print(f"MLPerf DLRM-DCNv2 bags ({sum(MLPERF_BAGS)} ids per example), optimizer {optimizer}")
  print("| devices | plan | ids used per owner | slots/owner by position | x | packed | x |")
  print("|---|---|---|---|---|---|---|")
  for devices in (8,):
    for plan in ("table", "auto"):
      layout = plan_layout(specs, devices, default=plan, slot_floats_per_row=slots)
      tw = bags.table_wise_positions(layout)
      used = tw.used.sum(axis=1)
      by_position, packed = sum(tw.widths), tw.cols.shape[1]
      shown = ",".join(map(str, used))
      print(
        f"| {devices} | {plan} | {shown} (sum {used.sum()}) | {by_position} "
        f"| {by_position * devices / used.sum():.2f} | {packed} "
        f"| {packed * devices / used.sum():.2f} |"
      )
  print(
    "\nx: id slots of all owners / ids used. 'by position': position j of every owner padded"
    "\nto the widest bag any owner has there (before); 'packed': each owner's bags back to back"
    "\n(now). A table-wise bag of 100 ids sets the floor of the table plan."
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
  parser.add_argument(
    "--multi_hot",
    action="store_true",
    help="print table-wise id slots per owner at MLPerf DLRM-DCNv2's bag sizes instead",
  )
  args = parser.parse_args()
  if args.multi_hot:
    multi_hot_slots(args.optimizer)
    return
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
