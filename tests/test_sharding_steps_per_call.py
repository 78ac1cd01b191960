"""--steps_per_call=K: K steps in one lax.scan equal K single steps, on a hybrid-parallel mesh."""

import jax
import numpy as np
import pytest
from sharding_testlib import Sharded, make_batch

from dlrm_jax.train.step import batch_shardings, make_train_step

K = 3


@pytest.mark.parametrize("mesh_shape,plan,optimizer", [((2, 4), "mixed", "rowwise_adagrad")])
def test_scan_of_k_steps_equals_single_steps(mesh_shape, plan, optimizer):
  single, multi = Sharded(mesh_shape, plan, optimizer), Sharded(mesh_shape, plan, optimizer)
  abstract = jax.eval_shape(lambda s: s, multi.state)
  step_k = make_train_step(multi.model, multi.layout, multi.opt, multi.tx, multi.mesh, abstract, K)
  batches = [make_batch(i) for i in range(2 * K)]
  losses_single = []
  for b in batches:
    single.state, m = single.train_step(single.state, single.put(b))
    losses_single.append(float(m["loss"]))
  losses_multi = []
  for call in range(2):
    group = batches[call * K : (call + 1) * K]
    stacked = {k: np.stack([b[k] for b in group]) for k in group[0]}
    multi.state, m = step_k(multi.state, jax.device_put(stacked, batch_shardings(multi.mesh, True)))
    assert m["loss"].shape == (K,)
    losses_multi += [float(x) for x in m["loss"]]
  assert losses_multi == losses_single
  assert int(multi.state.step) == int(single.state.step) == 2 * K
  for a, b in zip(jax.tree.leaves(multi.state), jax.tree.leaves(single.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(multi.tables(), single.tables(), strict=True):
    np.testing.assert_array_equal(a, b)
