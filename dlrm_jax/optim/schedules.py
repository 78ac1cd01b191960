"""The reference's learning-rate policy (LRPolicyScheduler) as a jittable step -> lr."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# The reference's floor during the decay (an absolute rate, not a fraction).
MIN_LR = 1e-7


@dataclasses.dataclass(frozen=True)
class LRSchedule:
  """Warmup, hold, polynomial decay, hold: the reference's ``LRPolicyScheduler``.

  The reference evaluates its rule at ``c = _step_count``, which is ``s + 1`` for
  the update made at 0-based step ``s`` (PyTorch's scheduler steps once at
  construction, and once after each optimizer step). With W warmup steps,
  decay start S, N decay steps and power p (the reference hard-codes 2):

    c < W:            lr = base * c / W                          (linear warmup)
    S <= c < S + N:   lr = max(1e-7, base * ((N - (c - S)) / N) ** p)   (decay)
    otherwise:        N = 0: lr = base. N > 0: the last rate set above is held,
                      i.e. base * (W - 1) / W between warmup and decay (not base:
                      the reference's rule, kept) and max(1e-7, base / N ** p)
                      after the decay.

  Where the reference holds a rate it never set (N > 0, W <= 1 and S > 1: it
  raises AttributeError at the first step), this holds ``base``.
  ``is_constant`` (W <= 1 and N = 0) means exactly ``base`` at every step.
  """

  base: float
  warmup_steps: int = 0
  decay_start_step: int = 0
  decay_steps: int = 0
  power: float = 2.0

  @property
  def is_constant(self) -> bool:
    return self.warmup_steps <= 1 and self.decay_steps == 0

  def _held_after_warmup(self) -> float:
    w = self.warmup_steps
    return self.base * (w - 1) / w if w >= 2 else self.base

  def _held_after_decay(self) -> float:
    s, n = self.decay_start_step, self.decay_steps
    if s + n - 1 >= 1:  # the decay's last count was visited
      return max(MIN_LR, self.base * (1.0 / n) ** self.power)
    return self._held_after_warmup()

  def __call__(self, step: jax.Array) -> jax.Array:
    """f32[] rate of the update made at ``step`` (i32[], 0-based); traceable."""
    c = jnp.asarray(step, jnp.int32) + 1
    w, s, n = self.warmup_steps, self.decay_start_step, self.decay_steps
    cf = c.astype(jnp.float32)
    lr = jnp.float32(self.base)
    if n > 0:
      frac = jnp.maximum(n - (cf - s), 0.0) / n
      decayed = jnp.maximum(MIN_LR, self.base * frac**self.power)
      held = jnp.where(c >= s + n, self._held_after_decay(), self._held_after_warmup())
      lr = jnp.where((c >= s) & (c < s + n), decayed, held).astype(jnp.float32)
    if w > 0:
      lr = jnp.where(c < w, self.base * cf / w, lr)
    return lr.astype(jnp.float32)


def learning_rate(
  base: float,
  warmup_steps: int = 0,
  decay_start_step: int = 0,
  decay_steps: int = 0,
  power: float = 2.0,
) -> float | LRSchedule:
  """``base`` itself when the policy is constant (the step is then unchanged), else the schedule."""
  schedule = LRSchedule(base, warmup_steps, decay_start_step, decay_steps, power)
  return base if schedule.is_constant else schedule
