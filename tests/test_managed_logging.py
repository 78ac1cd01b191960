"""--id_mapping=managed: occupancy and counters per table in metrics.jsonl, TensorBoard, logs."""

from __future__ import annotations

import json

import criteo_reference as ref
import numpy as np
from main_runner import run_main
from tensorboard_testlib import assert_events_match_metrics

from dlrm_jax.reporting import managed_ids

# 7 days of 768 rows: the 6 training days are exactly 18 batches of 256, so 18 steps read every
# training row once (training drops a last partial batch) and the ids seen are all of them.
ROWS, BATCH, STEPS, CAPACITY = 7 * 768, 256, 18, 150


def test_counters_equal_an_independent_count_of_the_ids_read(tmp_path):
  work, data = tmp_path / "work", tmp_path / "data"
  proc = run_main(
    work,
    data,
    "--id_mapping=managed",
    f"--managed_capacity={CAPACITY}",
    f"--synthetic_rows={ROWS}",
    f"--batch_size={BATCH}",
    f"--max_steps={STEPS}",
    "--log_every_steps=6",
    "--eval_every_steps=0",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = ref.physical_lines(next(data.glob("synthetic_*/train.txt")).read_bytes())
  train = ref.split_days(ref.kaggle_days(lines))["train"]
  assert len(train) == STEPS * BATCH
  # By definition: a missing value is the raw value 0; every table holds at most CAPACITY ids.
  raw = np.array([[int(f, 16) if f else 0 for f in fields[14:40]] for fields in train])
  distinct = [len(np.unique(raw[:, t])) for t in range(26)]
  names = [f"C{t}" for t in range(1, 27)]
  records = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "managed_occupancy" in r]
  assert [r["step"] for r in logged] == [6, 12, 18]
  for r in logged:
    held, ins, ev = (r[f"managed_{k}"] for k in ("occupancy", "inserted", "evicted"))
    for n in names + ["total"]:
      assert held[n] == ins[n] - ev[n]
    assert all(0 <= held[n] <= CAPACITY for n in names)
    assert held["total"] == sum(held[n] for n in names)
  last = logged[-1]
  for t, n in enumerate(names):
    assert last["managed_occupancy"][n] == min(distinct[t], CAPACITY), n
    if distinct[t] <= CAPACITY:  # every id found a free row and kept it
      assert (last["managed_inserted"][n], last["managed_evicted"][n]) == (distinct[t], 0), n
    else:  # every distinct id was placed at least once or counted as unplaced
      assert last["managed_inserted"][n] + last["managed_unplaced"][n] >= distinct[t], n
  assert min(distinct) < CAPACITY < max(distinct), distinct  # both kinds of table are covered
  # Steps are monotone: counters only grow.
  for a, b in zip(logged, logged[1:], strict=False):
    assert all(b["managed_inserted"][n] >= a["managed_inserted"][n] for n in names)
  scalars = assert_events_match_metrics(work)
  assert scalars["train/managed_occupancy/C1"][STEPS] == last["managed_occupancy"]["C1"]
  # The log line: totals and the fullest tables.
  total = last["managed_occupancy"]["total"]
  assert f"step {STEPS} managed ids: {total:,} held of {26 * CAPACITY:,}" in proc.stdout


def test_counter_record_and_summary_from_numbers():
  counters = {
    "inserted": np.array([5, 9, 1]),
    "evicted": np.array([0, 5, 0]),
    "unplaced": np.array([0, 2, 0]),
  }
  record = managed_ids.counter_record(counters, ["a", "b", "c"])
  assert record["managed_occupancy"] == {"a": 5, "b": 4, "c": 1, "total": 10}
  assert record["managed_unplaced"] == {"a": 0, "b": 2, "c": 0, "total": 2}
  line = managed_ids.summary(7, record, {"a": 10, "b": 4, "c": 2})
  assert line == (
    "step 7 managed ids: 10 held of 16 (62.5%); inserted 15, evicted 5, unplaced 2; "
    "fullest: b 4/4, a 5/10, c 1/2"  # a and c tie at half full: table order
  )
