"""Every dot of the real train program follows model/policy.py, for every interaction and dtype.

bf16: both operands bf16, the result (the accumulation) f32, forward and
backward. f32: every dot asks Precision.HIGHEST (no TF32 on GPUs). Read from
the lowered program of make_train_step, so the backward dots are covered.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sharding_testlib import DIM, Sharded, make_batch

from dlrm_jax.model import policy
from dlrm_jax.model.dlrm import DenseModel

MODELS = {
  "dot": dict(bottom_mlp=(16, DIM), top_mlp=(16, 1)),
  "dot_itself": dict(bottom_mlp=(16, DIM), top_mlp=(16, 1), interaction_itself=True),
  "cat": dict(bottom_mlp=(16, DIM), top_mlp=(16, 1), interaction="cat"),
  "dcn": dict(
    bottom_mlp=(16, DIM), top_mlp=(1,), interaction="dcn", dcn_num_layers=2, dcn_deep_mlp=(16, 8)
  ),
  "dcnv2": dict(
    bottom_mlp=(16, DIM), top_mlp=(16, 1), interaction="dcnv2", dcn_num_layers=2, dcn_low_rank_dim=4
  ),
  "dcnv2_full_rank": dict(
    bottom_mlp=(16, DIM), top_mlp=(16, 1), interaction="dcnv2", dcn_num_layers=2
  ),
  "embedding_mlp": dict(bottom_mlp=(16, DIM), top_mlp=(16, 1), embedding_mlp=(12, DIM)),
  "embedding_mlp_per_feature": dict(
    bottom_mlp=(16, DIM), top_mlp=(16, 1), embedding_mlp=(12, DIM), embedding_mlp_shared=False
  ),
}
# A dot's operand and result types in StableHLO: ": (tensor<64x13xbf16>, ...) -> tensor<...>".
SIGNATURE = re.compile(r":\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)\s*->\s*(tensor<[^>]*>)")


def element_type(tensor_type: str) -> str:
  return re.fullmatch(r"tensor<(?:[\d?]+x)*(\w+)>", tensor_type).group(1)


def train_dots(model: DenseModel) -> list[str]:
  """The dot lines of the lowered train step (forward, backward and update) of ``model``."""
  s = Sharded((8,), "table", "sgd", dense_model=model)
  text = s.train_step.lower(s.state, s.put(make_batch(0))).as_text()
  return [line for line in text.splitlines() if re.search(r"stablehlo\.dot(_general)?\b", line)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_dots_take_bf16_operands_and_accumulate_in_f32(name):
  dots = train_dots(DenseModel(**MODELS[name], dtype=jnp.bfloat16))
  assert len(dots) >= 3, dots
  for line in dots:
    lhs, rhs, out = (element_type(t) for t in SIGNATURE.search(line).groups())
    assert (lhs, rhs, out) == ("bf16", "bf16", "f32"), line


@pytest.mark.parametrize("name", sorted(MODELS))
def test_f32_dots_ask_highest_precision(name):
  dots = train_dots(DenseModel(**MODELS[name]))
  assert len(dots) >= 3, dots
  for line in dots:
    assert "precision = [HIGHEST, HIGHEST]" in line, line
    assert set(map(element_type, SIGNATURE.search(line).groups())) == {"f32"}, line


def test_parameters_stay_f32_in_bf16():
  model = DenseModel(**MODELS["dcnv2"], dtype=jnp.bfloat16)
  params = model.init(jax.random.key(0), jnp.ones((4, 13)), jnp.ones((4, 3, DIM)))["params"]
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_bf16_dense_gradients_match_numpy_on_rounded_operands():
  """policy.dense's custom VJP against the formula in NumPy, on bf16-rounded x, kernel and g.

  x[B, T, K] as the shared embedding MLP sees it. The only rounding left is
  the gradients' own bf16 output (relative 2^-9).
  """
  x = jax.random.normal(jax.random.key(0), (6, 3, 40))
  kernel = jax.random.normal(jax.random.key(1), (40, 24))
  loss = lambda x, k: jnp.sum(jnp.sin(policy.dense(x, k, jnp.bfloat16)))  # noqa: E731
  dx, dk = jax.grad(loss, (0, 1))(x, kernel)

  def rounded(a):
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)

  xr, kr = rounded(x), rounded(kernel)
  g = rounded(np.cos(np.einsum("btk,kn->btn", xr, kr)))
  want_dx, want_dk = np.einsum("btn,kn->btk", g, kr), np.einsum("btk,btn->kn", xr, g)
  np.testing.assert_allclose(dx, want_dx, rtol=2**-8, atol=1e-6 * np.abs(want_dx).max())
  np.testing.assert_allclose(dk, want_dk, rtol=2**-8, atol=1e-6 * np.abs(want_dk).max())
