"""DCN and DCN-V2 cross networks, the embedding MLP and parameter counts, against NumPy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.model.cross import LowRankCrossNet, VectorCrossNet
from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.model.mlp import EmbeddingMLP
from dlrm_jax.train.components import Components, dense_model, parameter_counts

KAGGLE_ROWS = (
  1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
  27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip


def _init(module, *args):
  return jax.jit(module.init)(jax.random.key(0), *args)


def _apply(module, params, *args):
  return jax.jit(module.apply)({"params": params}, *args)


def _randomize(params, seed=1):
  """Every leaf replaced by N(0, 0.3): zero-initialised biases must take part too."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
    treedef, [jnp.asarray(0.3 * rng.normal(size=x.shape), jnp.float32) for x in leaves]
  )


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# NumPy references, one example at a time, with the papers' column-vector notation.


def np_dcn_cross(x0, ws, bs):
  """Wang et al. 2017: x_{l+1} = x0 (x_l . w_l) + b_l + x_l."""
  out = []
  for e in x0:
    x = e.copy()
    for w, b in zip(ws, bs, strict=True):
      x = e * float(np.dot(x, w)) + b + x
    out.append(x)
  return np.array(out)


def np_dcnv2_cross(x0, mats, bs):
  """Wang et al. 2021: x_{l+1} = x0 * (M_l x_l + b_l) + x_l, M_l = W_l or U_l V_l (d x d)."""
  out = []
  for e in x0:
    x = e.copy()
    for m, b in zip(mats, bs, strict=True):
      x = e * (m @ x + b) + x
    out.append(x)
  return np.array(out)


def np_mlp(x, p, relu_last):
  n = len(p)
  for i in range(n):
    x = x @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"]
    if i < n - 1 or relu_last:
      x = np.maximum(x, 0)
  return x


def _dcn_params(p, layers):
  return [p[f"kernel_{i}"] for i in range(layers)], [p[f"bias_{i}"] for i in range(layers)]


def _dcnv2_params(p, layers, rank):
  if rank:  # stored transposed: v = V^T [d, r], u = U^T [r, d]
    mats = [p[f"u_{i}"].T @ p[f"v_{i}"].T for i in range(layers)]
  else:
    mats = [p[f"w_{i}"].T for i in range(layers)]
  return mats, [p[f"bias_{i}"] for i in range(layers)]


def test_dcn_cross_matches_formula():
  x0 = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
  net = VectorCrossNet(3)
  params = _randomize(_init(net, x0)["params"])
  assert {k: v.shape for k, v in params.items()} == {
    **{f"kernel_{i}": (12,) for i in range(3)},
    **{f"bias_{i}": (12,) for i in range(3)},
  }
  got = _apply(net, params, x0)
  want = np_dcn_cross(x0.astype(np.float64), *_dcn_params(_np(params), 3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [0, 3])
def test_dcnv2_cross_matches_formula(rank):
  x0 = np.random.default_rng(1).normal(size=(5, 10)).astype(np.float32)
  net = LowRankCrossNet(2, rank)
  params = _randomize(_init(net, x0)["params"])
  got = _apply(net, params, x0)
  want = np_dcnv2_cross(x0.astype(np.float64), *_dcnv2_params(_np(params), 2, rank))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dcnv2_full_rank_equals_low_rank_with_uv_equal_w():
  d = 9
  x0 = np.random.default_rng(2).normal(size=(6, d)).astype(np.float32)
  low, full = LowRankCrossNet(3, d), LowRankCrossNet(3, 0)
  lp = _randomize(_init(low, x0)["params"], seed=3)
  # W = U V, so W^T = V^T U^T = v @ u in the stored (transposed) form.
  fp = {f"w_{i}": lp[f"v_{i}"] @ lp[f"u_{i}"] for i in range(3)}
  fp.update({f"bias_{i}": lp[f"bias_{i}"] for i in range(3)})
  assert jax.tree.map(jnp.shape, fp) == jax.tree.map(jnp.shape, _init(full, x0)["params"])
  np.testing.assert_allclose(_apply(full, fp, x0), _apply(low, lp, x0), rtol=1e-5, atol=1e-5)


def test_cross_init_is_torchrec_xavier_normal_with_zero_bias():
  x0 = jnp.zeros((1, 400))
  v1 = VectorCrossNet(2).init(jax.random.key(0), x0)["params"]
  v2 = LowRankCrossNet(2, 300).init(jax.random.key(0), x0)["params"]
  full = LowRankCrossNet(1, 0).init(jax.random.key(0), x0)["params"]
  for p in (v1, v2, full):
    for name, x in p.items():
      if name.startswith("bias"):
        np.testing.assert_array_equal(x, 0)
  np.testing.assert_allclose(np.std(np.concatenate([v1["kernel_0"], v1["kernel_1"]])),
                             math.sqrt(2 / 401), rtol=0.06)  # fmt: skip
  for name in ("u_0", "v_0", "u_1"):
    np.testing.assert_allclose(np.std(v2[name]), math.sqrt(2 / 700), rtol=0.02)
    assert abs(float(np.mean(v2[name]))) < 0.002
  np.testing.assert_allclose(np.std(full["w_0"]), math.sqrt(1 / 400), rtol=0.02)
  # Layers and U/V draw independently.
  assert not np.allclose(v2["u_0"][:5, :5], v2["u_1"][:5, :5])


def _dense_forward_np(kind, p, dense, emb, layers, rank=0):
  """The whole DenseModel in NumPy: bottom MLP, x0, cross (+ deep), top MLP."""
  bottom = np_mlp(dense, p["bottom_mlp"], relu_last=True)
  x0 = np.concatenate([bottom] + [emb[:, t] for t in range(emb.shape[1])], axis=1)
  if kind == "dcn":
    cross = np_dcn_cross(x0, *_dcn_params(p["cross"], layers))
    z = np.concatenate([cross, np_mlp(x0, p["deep_mlp"], relu_last=True)], axis=1)
  else:
    z = np_dcnv2_cross(x0, *_dcnv2_params(p["cross"], layers, rank))
  return np_mlp(z, p["top_mlp"], relu_last=False)[:, 0]


@pytest.mark.parametrize("kind", ["dcn", "dcnv2"])
def test_dense_model_matches_numpy(kind):
  b, t, d = 4, 3, 4
  rng = np.random.default_rng(4)
  dense = rng.normal(size=(b, 13)).astype(np.float32)
  emb = rng.normal(size=(b, t, d)).astype(np.float32)
  model = DenseModel(
    bottom_mlp=(8, d),
    top_mlp=(6, 1),
    interaction=kind,
    dcn_num_layers=2,
    dcn_deep_mlp=(7, 5) if kind == "dcn" else (),
    dcn_low_rank_dim=3 if kind == "dcnv2" else 0,
  )
  params = _randomize(_init(model, dense, emb)["params"])
  got = _apply(model, params, dense, emb)
  x0_width = (t + 1) * d
  top_in = x0_width + 5 if kind == "dcn" else x0_width
  assert got.shape == (b,)
  assert params["top_mlp"]["dense_0"]["kernel"].shape == (top_in, 6)
  want = _dense_forward_np(kind, _np(params), dense, emb, 2, 3)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_embedding_mlp_matches_numpy(shared):
  b, t, d = 3, 4, 5
  emb = np.random.default_rng(5).normal(size=(b, t, d)).astype(np.float32)
  mlp = EmbeddingMLP((7, d), shared)
  params = _init(mlp, emb)["params"]
  inner = params["shared" if shared else "per_feature"]
  want_shape = (d, 7) if shared else (t, d, 7)
  assert inner["dense_0"]["kernel"].shape == want_shape
  # Biases start at zero (see EmbeddingMLP); per-feature kernels differ between features.
  np.testing.assert_array_equal(inner["dense_1"]["bias"], 0)
  if not shared:
    assert not np.allclose(inner["dense_0"]["kernel"][0], inner["dense_0"]["kernel"][1])
  params = _randomize(params, seed=6)
  got = np.asarray(_apply(mlp, params, emb))
  p = _np(params["shared" if shared else "per_feature"])
  want = np.zeros((b, t, d))
  for i in range(b):
    for f in range(t):
      fp = p if shared else jax.tree.map(lambda x, f=f: x[f], p)
      h = np.maximum(emb[i, f] @ fp["dense_0"]["kernel"] + fp["dense_0"]["bias"], 0)
      want[i, f] = h @ fp["dense_1"]["kernel"] + fp["dense_1"]["bias"]  # no ReLU after the last
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert (want < 0).any()


def test_dense_model_applies_embedding_mlp_before_the_interaction():
  rng = np.random.default_rng(7)
  dense = rng.normal(size=(3, 13)).astype(np.float32)
  emb = rng.normal(size=(3, 2, 4)).astype(np.float32)
  with_mlp = DenseModel((4,), (1,), "cat", embedding_mlp=(6, 4))
  params = _randomize(_init(with_mlp, dense, emb)["params"])
  p = _np(params)
  e = np.maximum(emb @ p["embedding_mlp"]["shared"]["dense_0"]["kernel"]
                 + p["embedding_mlp"]["shared"]["dense_0"]["bias"], 0)  # fmt: skip
  e = (
    e @ p["embedding_mlp"]["shared"]["dense_1"]["kernel"]
    + p["embedding_mlp"]["shared"]["dense_1"]["bias"]
  )
  bottom = np_mlp(dense, p["bottom_mlp"], relu_last=True)
  z = np.concatenate([bottom, e.reshape(3, -1)], axis=1)
  want = np_mlp(z, p["top_mlp"], relu_last=False)[:, 0]
  np.testing.assert_allclose(_apply(with_mlp, params, dense, emb), want, rtol=1e-5)


def _counts(**kw):
  config = Config(**kw).validate()
  c = Components(config, None, None, dense_model(config), None, None, KAGGLE_ROWS)
  return parameter_counts(c)


def _mlp_count(widths):
  return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def test_parameter_counts_kaggle_by_hand():
  emb = sum(KAGGLE_ROWS) * 16
  assert emb == 540_201_232  # 33,762,577 rows x 16
  bottom = _mlp_count((13, 512, 256, 64, 16))
  x0 = 27 * 16
  dlrm = bottom + _mlp_count((16 + 351, 512, 256, 1))
  dcn = bottom + 6 * 2 * x0 + _mlp_count((x0, 512, 256)) + _mlp_count((x0 + 256, 1))
  dcnv2 = bottom + 3 * (2 * x0 * 512 + x0) + _mlp_count((x0, 512, 256, 1))
  assert _counts() == {"dense": dlrm, "embedding": emb, "total": dlrm + emb}
  assert dlrm == 475_985
  assert _counts(interaction="dcn", top_mlp=(1,))["dense"] == dcn == 514_881
  assert _counts(interaction="dcn", top_mlp=(1,))["total"] == 540_716_113  # the paper: ~540M
  assert _counts(interaction="dcnv2")["dense"] == dcnv2 == 1_837_665
  full = bottom + 3 * (x0 * x0 + x0) + _mlp_count((x0, 512, 256, 1))
  assert _counts(interaction="dcnv2", dcn_low_rank_dim=0)["dense"] == full
  assert _counts(embedding_mlp=(32, 16))["dense"] == dlrm + _mlp_count((16, 32, 16))
  per_feature = _counts(embedding_mlp=(32, 16), embedding_mlp_shared=False)["dense"]
  assert per_feature == dlrm + 26 * _mlp_count((16, 32, 16))


@pytest.mark.parametrize(
  "kw, flag",
  [
    (dict(interaction="dcn", bottom_mlp=(64, 8)), "--bottom_mlp"),
    (dict(interaction="dcnv2", bottom_mlp=(64, 8)), "--bottom_mlp"),
    (dict(interaction="dcn", dcn_deep_mlp=()), "--dcn_deep_mlp"),
    (dict(interaction="dot", dcn_deep_mlp=(64,)), "--dcn_deep_mlp"),
    (dict(interaction="dcn", dcn_low_rank_dim=64), "--dcn_low_rank_dim"),
    (dict(interaction="cat", dcn_num_layers=2), "--dcn_num_layers"),
    (dict(interaction="dcnv2", dcn_num_layers=-1), "--dcn_num_layers"),
    (dict(interaction="dcnv2", dcn_low_rank_dim=-1), "--dcn_low_rank_dim"),
    (dict(interaction="dcn", interaction_itself=True), "--interaction_itself"),
    (dict(embedding_mlp=(32, 8)), "--embedding_mlp"),
    (dict(embedding_mlp=(0, 16)), "--embedding_mlp"),
    (dict(embedding_mlp_shared=False), "--noembedding_mlp_shared"),
  ],
)
def test_config_refuses_naming_the_flag(kw, flag):
  with pytest.raises(ConfigError, match=flag):
    Config(**kw).validate()


def test_reference_depths():
  assert Config(interaction="dcn").resolved_dcn_num_layers == 6
  assert Config(interaction="dcnv2").resolved_dcn_num_layers == 3
  assert Config(interaction="dcnv2", dcn_num_layers=2).resolved_dcn_num_layers == 2
  assert dense_model(Config(interaction="dcn")).dcn_num_layers == 6


def test_checkpoint_of_another_dense_model_is_refused():
  from dlrm_jax.checkpoint import manager as checkpointing
  from dlrm_jax.faults import CheckpointMismatch

  def ident(**kw):
    return checkpointing.identity(Config(**kw), ["C1"], [10])

  saved = {"identity": ident(interaction="dcnv2", dcn_low_rank_dim=64)}
  for now, field in [
    (ident(interaction="dcnv2"), "dcn_low_rank_dim"),
    (ident(interaction="dcn"), "interaction"),
    (ident(interaction="dcnv2", dcn_low_rank_dim=64, embedding_mlp=(16,)), "embedding_mlp"),
  ]:
    with pytest.raises(CheckpointMismatch, match=field):
      checkpointing.check_compatible(saved, now, "ckpt", resume=False)
  checkpointing.check_compatible(saved, saved["identity"], "ckpt", resume=False)
  # A checkpoint from before these fields existed is the plain model.
  old = {k: v for k, v in ident().items() if not k.startswith(("dcn_", "embedding_mlp"))}
  checkpointing.check_compatible({"identity": old}, ident(), "ckpt", resume=False)
  with pytest.raises(CheckpointMismatch, match="embedding_mlp"):
    checkpointing.check_compatible({"identity": old}, ident(embedding_mlp=(16,)), "c", resume=False)
