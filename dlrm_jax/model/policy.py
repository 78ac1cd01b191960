"""The one dtype, precision and initialiser policy of every dense layer in model/."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.dtype(jnp.float32)


def dot_kwargs(dtype) -> dict[str, Any]:
  """Keyword arguments of every dot (lax.dot_general, jnp.einsum) whose operands are ``dtype``.

  f32: HIGHEST precision, so GPUs do not round operands to TF32 (the reference
  does not). Lower precisions: accumulate and return f32
  (``preferred_element_type``), which XLA:CPU runs at the machine's bf16 rate
  (bf16 x bf16 -> bf16 runs at the f32 rate or below) and which keeps sums exact
  to f32 rounding.
  """
  if jnp.dtype(dtype) == F32:
    return {"precision": lax.Precision.HIGHEST}
  return {"precision": lax.Precision.DEFAULT, "preferred_element_type": jnp.float32}


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, dtype) -> jax.Array:
  """``lax.dot_general`` with both operands cast to ``dtype``; f32 out (see dot_kwargs)."""
  dtype = jnp.dtype(dtype)
  return lax.dot_general(
    lhs.astype(dtype), rhs.astype(dtype), dimension_numbers, **dot_kwargs(dtype)
  )


def _contract_last(x: jax.Array):
  return (((x.ndim - 1,), (0,)), ((), ()))


def dense(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """``x @ kernel`` under the policy: x[..., K], kernel[K, N] -> f32[..., N].

  f32: one HIGHEST dot, differentiated by JAX (bit-identical to flax's
  nn.Dense). bf16: bf16 operands and f32 accumulation, forward and backward
  (see _low_dense).
  """
  if jnp.dtype(dtype) == F32:
    return lax.dot_general(x, kernel, _contract_last(x), precision=lax.Precision.HIGHEST)
  return _low_dense(x, kernel, jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_dense(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """x[..., K], kernel[K, N] (f32) -> f32[..., N], the dot taking ``dtype`` operands."""
  return lax.dot_general(
    x.astype(dtype), kernel.astype(dtype), _contract_last(x), **dot_kwargs(dtype)
  )


def _low_dense_fwd(x, kernel, dtype):
  # The weight gradient's dot runs faster on XLA:CPU with x contiguous as
  # [K, M] (M: the leading axes flattened) than contracting x's leading axis
  # (issue 20: 363 against 131 GFLOP/s on a 2048 x 512 x 256 layer). A
  # transpose alone is only a column-major layout, and XLA:CPU's operand
  # upcaster turns a bf16 dot with a column-major operand into an f32 one; the
  # flattening copies it row-major, and the barrier keeps that copy.
  k = x.shape[-1]
  flat = lax.optimization_barrier(x.astype(dtype).reshape(-1, k).T.reshape(-1))
  xt = flat.reshape(k, -1)
  # Empty arrays carry the primals' dtypes to the backward pass (residuals are arrays).
  dtypes = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))
  return _low_dense(x, kernel, dtype), (xt, kernel.astype(dtype), dtypes)


def _low_dense_bwd(dtype, residuals, g):
  # Autodiff would hand the f32 cotangent g to the two transposed dots, which
  # then run f32 x bf16 (upcast to f32) at the f32 rate: cast it down first, so
  # that the backward dots also take low-precision operands. They accumulate in
  # f32 and their results are returned in f32, never rounded to the operand
  # dtype: the residual paths around a layer (DCN's `+ x_l`) and the parameters'
  # gradients keep f32 precision.
  xt, kernel, (x_like, kernel_like) = residuals
  g = g.astype(dtype)
  kw = dot_kwargs(dtype)
  # dx[..., K] = g[..., N] . kernel[K, N] over N, no transpose of the kernel;
  # dkernel[K, N] = xt[K, M] . g[M, N].
  dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), **kw)
  dk = lax.dot_general(xt, g.reshape(-1, g.shape[-1]), (((1,), (0,)), ((), ())), **kw)
  return dx.astype(x_like.dtype), dk.astype(kernel_like.dtype)


_low_dense.defvjp(_low_dense_fwd, _low_dense_bwd)


def reference_normal(key, shape, dtype=jnp.float32) -> jax.Array:
  """N(0, sqrt(2 / (a + b))) on a 2-D [a, b] shape, untruncated.

  The reference's create_mlp weights, and torch.nn.init.xavier_normal_ (the
  cross nets' init in TorchRec). jax.nn.initializers.glorot_normal truncates,
  so it is not used. Symmetric in a and b: storing a matrix transposed does
  not change its law.
  """
  a, b = shape
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / (a + b)).astype(dtype)


def reference_bias(key, shape, dtype=jnp.float32) -> jax.Array:
  """N(0, sqrt(1 / fan_out)): the reference's create_mlp biases."""
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / shape[0]).astype(dtype)
