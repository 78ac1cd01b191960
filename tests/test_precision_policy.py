"""Every dot of the real train program follows model/policy.py, for every interaction and dtype.

bf16: both operands bf16, the result (the accumulation) f32, forward and
backward. f32: every dot asks Precision.HIGHEST (no TF32 on GPUs). Read from
the lowered program of make_train_step, so the backward dots are covered.
"""

import pathlib
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


def scaled_flagfile_model(path: str, divisor: int = 64) -> dict:
  """The dense model of a flagfile with every width and the rank divided by ``divisor``.

  The bottom MLP still ends in DIM (the embedding dim), and the logit layer stays 1.
  """
  flags = dict(
    line.strip().lstrip("-").split("=", 1)
    for line in open(path)
    if line.startswith("--") and "=" in line
  )

  def widths(text: str) -> tuple[int, ...]:
    return tuple(max(int(w) // divisor, 2) for w in text.split(","))

  return dict(
    bottom_mlp=widths(flags["bottom_mlp"])[:-1] + (DIM,),
    top_mlp=widths(flags["top_mlp"])[:-1] + (1,),
    interaction=flags["interaction"],
    dcn_num_layers=int(flags["dcn_num_layers"]),
    dcn_low_rank_dim=max(int(flags["dcn_low_rank_dim"]) // divisor, 2),
  )


# experiments/mlperf_dcnv2.flags' model (bottom 512-256-128, top 1024-1024-512-256-1,
# 3 cross layers of rank 512), scaled down (issue 17: the dtype policy at size).
MODELS["mlperf_dcnv2_scaled"] = scaled_flagfile_model(
  str(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "mlperf_dcnv2.flags")
)
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


# Compiled HLO text: "%name = bf16[2048,367]{1,0} op(...", and a dot with its output dims.
HLO_VALUE = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (\w+)\[")
HLO_DOT = re.compile(r"= \w+\[([\d,]*)\]\S* dot\((%[\w.\-]+), (%[\w.\-]+)\)")


def test_bf16_mlp_dots_stay_bf16_after_xla_optimizes():
  """The compiled program, not only the lowered one: XLA:CPU's operand upcaster turns a bf16
  dot whose operand is only a transposed layout into an f32 dot, which ran the weight
  gradients at the f32 rate (issue 20). Every matrix-sized dot of a bf16 MLP's forward and
  backward must still take bf16 operands once XLA has optimized it (XLA may rewrite the
  1-wide output layer's dots as f32 vector products: a negligible share)."""

  def loss(kernels, x):
    for i, kernel in enumerate(kernels):
      x = policy.dense(x, kernel, jnp.bfloat16)
      x = jax.nn.relu(x) if i < len(kernels) - 1 else x
    return jnp.sum(x)

  widths = (367, 512, 256, 1)  # the reference top MLP, at a real batch
  kernels = [jnp.ones((a, b)) for a, b in zip(widths[:-1], widths[1:], strict=True)]
  x = jnp.ones((2048, widths[0]))
  text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(kernels, x).compile().as_text()
  types = {m.group(1): m.group(2) for m in map(HLO_VALUE.match, text.splitlines()) if m}
  matrix_dots = [
    (lhs, rhs)
    for dims, lhs, rhs in (m.groups() for m in map(HLO_DOT.search, text.splitlines()) if m)
    if all(int(d) > 1 for d in dims.split(","))
  ]
  # forward 2, input gradients 2, weight gradients 2 (the 512- and 256-wide layers' dots).
  assert len(matrix_dots) >= 6, text
  for lhs, rhs in matrix_dots:
    assert (types[lhs], types[rhs]) == ("bf16", "bf16"), (lhs, rhs)


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

  x[B, T, K] as the shared embedding MLP sees it. The gradients come back in f32,
  never rounded to bf16 (checked below); rtol 2^-8 covers a cotangent element
  that rounds to the other bf16 neighbour where f32 and f64 forwards differ.
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
  # f32-accumulated sums are almost never bf16 numbers: the results were not rounded to
  # bf16 on their way to the parameters (DCN-V2's residual paths and the sparse update
  # need them exact).
  for grad in (dx, dk):
    assert grad.dtype == jnp.float32
    assert np.mean(np.asarray(grad) != rounded(grad)) > 0.9
