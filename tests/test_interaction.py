"""Interaction layers against a plain NumPy transcription of the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlrm_jax.model.interaction import cat_interaction, dot_interaction, interaction_width


def numpy_dot_interaction(x, ly, itself):
  # The reference: T = cat([x] + ly); Z = T T^T; keep li, lj from the lower triangle.
  t = np.concatenate([x[:, None, :], ly], axis=1)
  z = t @ t.transpose(0, 2, 1)
  ni = t.shape[1]
  offset = 1 if itself else 0
  pairs = [z[:, i, j] for i in range(ni) for j in range(i + offset)]
  return np.concatenate([x, np.stack(pairs, axis=1)], axis=1)


@pytest.mark.parametrize("itself", [False, True])
def test_dot_matches_reference(itself):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 4)).astype(np.float32)
  ly = rng.normal(size=(5, 3, 4)).astype(np.float32)
  got = np.asarray(dot_interaction(x, ly, itself))
  want = numpy_dot_interaction(x, ly, itself)
  assert got.shape == (5, interaction_width("dot", 3, 4, itself))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("itself", [False, True])
def test_dot_gradient_matches_autodiff_of_plain_gather(itself):
  # dot_interaction has a hand-written backward; compare it with autodiff
  # through a plain (li, lj) gather of the Gram matrix.
  def plain(x, ly):
    t = jnp.concatenate([x[:, None, :], ly], axis=1)
    z = jnp.einsum("bid,bjd->bij", t, t)
    offset = 1 if itself else 0
    li = [i for i in range(t.shape[1]) for _ in range(i + offset)]
    lj = [j for i in range(t.shape[1]) for j in range(i + offset)]
    return jnp.concatenate([x, z[:, li, lj]], axis=1)

  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  ly = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, interaction_width("dot", 5, 4, itself))), jnp.float32)
  got = jax.grad(lambda a, b: jnp.sum(dot_interaction(a, b, itself) * weights), (0, 1))(x, ly)
  want = jax.grad(lambda a, b: jnp.sum(plain(a, b) * weights), (0, 1))(x, ly)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("itself", [False, True])
def test_dot_gradient_matches_numpy_chain_rule(itself):
  # Written from the reference's formula z_p = t_i . t_j for each kept pair
  # p = (i, j): the loss's gradient reaches t_i as w_p t_j and t_j as w_p t_i
  # (a kept diagonal pair therefore twice), and x also directly.
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 3)).astype(np.float32)
  ly = rng.normal(size=(4, 6, 3)).astype(np.float32)
  w = rng.normal(size=(4, interaction_width("dot", 6, 3, itself))).astype(np.float32)
  t = np.concatenate([x[:, None, :], ly], axis=1)
  dt = np.zeros_like(t)
  kept = [(i, j) for i in range(t.shape[1]) for j in range(i + (1 if itself else 0))]
  for p, (i, j) in enumerate(kept):
    wp = w[:, x.shape[1] + p, None]
    dt[:, i] += wp * t[:, j]
    dt[:, j] += wp * t[:, i]
  want_x, want_ly = dt[:, 0] + w[:, : x.shape[1]], dt[:, 1:]
  got_x, got_ly = jax.grad(lambda a, b: jnp.sum(dot_interaction(a, b, itself) * w), (0, 1))(x, ly)
  np.testing.assert_allclose(np.asarray(got_x), want_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got_ly), want_ly, rtol=1e-5, atol=1e-5)


def test_dot_width_for_criteo():
  # 26 tables + bottom output = 27 vectors -> 351 pairs + 16.
  assert interaction_width("dot", 26, 16) == 16 + 351


def test_cat():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3)).astype(np.float32)
  ly = rng.normal(size=(2, 4, 3)).astype(np.float32)
  got = np.asarray(cat_interaction(x, ly))
  np.testing.assert_array_equal(got, np.concatenate([x, ly.reshape(2, -1)], axis=1))
  assert got.shape[1] == interaction_width("cat", 4, 3)
