"""The MLPs' optimizer equals a NumPy loop of torch.optim.Adagrad / SGD (not optax.adagrad)."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlrm_jax.optim.dense import dense_optimizer

LR = 0.05


def _grads(seed, num_steps=4):
  rng = np.random.default_rng(seed)
  # Small gradients, as the MLPs see, plus exact zeros (a + 0 with a = 0 must not be NaN).
  out = []
  for _ in range(num_steps):
    g = {"w": 1e-4 * rng.normal(size=(3, 5)), "b": 1e-3 * rng.normal(size=(5,))}
    g["b"][0] = 0.0
    out.append({k: v.astype(np.float32) for k, v in g.items()})
  return out


def reference(name, params, grads, lr, eps=1e-10, initial_accumulator=0.0):
  """torch.optim.Adagrad's step, element by element: a += g*g; w -= lr * g / (sqrt(a) + eps)."""
  w = {k: np.array(v, np.float64) for k, v in params.items()}
  acc = {k: np.full(v.shape, initial_accumulator) for k, v in params.items()}
  for step, g in enumerate(grads):
    rate = lr(step) if callable(lr) else lr
    for k in w:
      for i in np.ndindex(w[k].shape):
        gi = float(g[k][i])
        if name == "sgd":
          w[k][i] -= rate * gi
        else:
          acc[k][i] += gi * gi
          w[k][i] -= rate * gi / (np.sqrt(acc[k][i]) + eps)
  return w


def _run(tx, params, grads):
  params = {k: jnp.asarray(v) for k, v in params.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  for g in grads:
    params, state = step(params, state, g)
  return {k: np.asarray(v) for k, v in params.items()}


def _params():
  rng = np.random.default_rng(0)
  return {"w": rng.normal(size=(3, 5)).astype(np.float32), "b": np.zeros(5, np.float32)}


@pytest.mark.parametrize(
  "name,eps,initial_accumulator",
  [("sgd", 1e-10, 0.0), ("adagrad", 1e-10, 0.0), ("adagrad", 1e-7, 0.0), ("adagrad", 1e-8, 0.1)],
)
def test_dense_optimizer_equals_torch_formula(name, eps, initial_accumulator):
  params, grads = _params(), _grads(1)
  tx = dense_optimizer(name, LR, eps=eps, initial_accumulator=initial_accumulator)
  got = _run(tx, params, grads)
  want = reference(name, params, grads, LR, eps, initial_accumulator)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_scheduled_rate_follows_the_update_count():
  params, grads = _params(), _grads(2)

  def schedule(step):
    return LR * (step + 1) / 4

  got = _run(dense_optimizer("adagrad", schedule), params, grads)
  want = reference("adagrad", params, grads, lambda s: LR * (s + 1) / 4)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_not_optax_adagrad_convention():
  """optax.adagrad (eps inside the root) is far from the reference at these gradients."""
  params, grads = _params(), _grads(3)
  want = reference("adagrad", params, grads, LR, eps=1e-7)
  ours = _run(dense_optimizer("adagrad", LR, eps=1e-7), params, grads)
  theirs = _run(optax.adagrad(LR, initial_accumulator_value=0.0, eps=1e-7), params, grads)
  assert np.max(np.abs(theirs["w"] - want["w"])) > 1e3 * np.max(np.abs(ours["w"] - want["w"]))


def test_saved_state_matches_optax_adagrad():
  """Checkpoints keep their layout: the serialised opt_state tree is optax.adagrad's."""
  params = _params()
  ours = flax.serialization.to_state_dict(dense_optimizer("adagrad", LR).init(params))
  theirs = flax.serialization.to_state_dict(optax.adagrad(LR).init(params))
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
