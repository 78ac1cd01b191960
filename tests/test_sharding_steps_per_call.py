"""--steps_per_call=K: K steps in one lax.scan equal K single steps bitwise, on a hybrid mesh.

Cases: one-hot ids with the dot interaction at a constant rate; multi-hot bags (every plan,
-1 padding); a learning-rate schedule whose rate changes at every step inside one K-step
call (warmup, then decay); DCN-V2.
"""

import jax
import numpy as np
import pytest
import sharding_testlib
from sharding_testlib import DIM, Sharded, make_batch
from test_sharding_multihot import BAGS, COLUMN, make_bag_batch

from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.optim.schedules import LRSchedule
from dlrm_jax.train.step import batch_shardings, make_train_step

K = 3
# c = step + 1: warmup at c = 1, 2, 3 (lr = base * c / 4), decay at c = 4, 5, 6: six rates.
SCHEDULE = LRSchedule(sharding_testlib.LR, warmup_steps=4, decay_start_step=4, decay_steps=3)
DCNV2 = DenseModel(
  bottom_mlp=(16, DIM), top_mlp=(16, 1), interaction="dcnv2", dcn_num_layers=2, dcn_low_rank_dim=4
)
CASES = {
  "onehot_dot_constant": dict(optimizer="rowwise_adagrad"),
  "multihot_bags": dict(optimizer="adagrad", bags=True),
  "lr_schedule_in_scan": dict(optimizer="adagrad", schedule=True),
  "dcnv2": dict(optimizer="rowwise_adagrad", dense_model=DCNV2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_scan_of_k_steps_equals_single_steps(case, monkeypatch):
  spec = CASES[case]
  if spec.get("schedule"):
    # Sharded reads the module's LR when it builds both optimizers.
    monkeypatch.setattr(sharding_testlib, "LR", SCHEDULE)
  extra = dict(bag_sizes=BAGS, overrides=COLUMN) if spec.get("bags") else {}
  make = make_bag_batch if spec.get("bags") else make_batch

  def build():
    return Sharded((2, 4), "mixed", spec["optimizer"], dense_model=spec.get("dense_model"), **extra)

  single, multi = build(), build()
  abstract = jax.eval_shape(lambda s: s, multi.state)
  step_k = make_train_step(multi.model, multi.layout, multi.opt, multi.tx, multi.mesh, abstract, K)
  batches = [make(i) for i in range(2 * K)]
  losses_single, lrs_single = [], []
  for b in batches:
    single.state, m = single.train_step(single.state, single.put(b))
    losses_single.append(float(m["loss"]))
    lrs_single.append(float(m["lr"]))
  losses_multi, lrs_multi = [], []
  for call in range(2):
    group = batches[call * K : (call + 1) * K]
    stacked = {k: np.stack([b[k] for b in group]) for k in group[0]}
    multi.state, m = step_k(multi.state, jax.device_put(stacked, batch_shardings(multi.mesh, True)))
    assert m["loss"].shape == (K,)
    losses_multi += [float(x) for x in m["loss"]]
    lrs_multi += [float(x) for x in m["lr"]]
  assert lrs_multi == lrs_single
  if spec.get("schedule"):
    assert len(set(lrs_multi)) == 2 * K  # the rate changes at every step, inside each call
    # Against the formula evaluated op by op (outside jit). Within one ulp, not bitwise: in any
    # jitted program XLA folds base * ((n - (c - s)) / n) ** 2 into x * x * (base / n**2), so at
    # c = 4 both jitted paths give 9 * f32(0.1 / 9) = 0.10000000894, one ulp above f32(0.1).
    expected = np.array([SCHEDULE(s) for s in range(2 * K)], np.float32)
    np.testing.assert_array_max_ulp(np.array(lrs_multi, np.float32), expected, maxulp=1)
  assert losses_multi == losses_single
  assert int(multi.state.step) == int(single.state.step) == 2 * K
  for a, b in zip(jax.tree.leaves(multi.state), jax.tree.leaves(single.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(multi.tables(), single.tables(), strict=True):
    np.testing.assert_array_equal(a, b)
