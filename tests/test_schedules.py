"""The learning-rate policy equals the reference's LRPolicyScheduler, written out step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.optim.schedules import LRSchedule, learning_rate


class ReferencePolicy:
  """dlrm_s_pytorch.py's LRPolicyScheduler.get_lr, stateful as there (power 2 there).

  PyTorch's scheduler steps once when built (``_step_count`` 1 for the first
  update) and once after every optimizer step; ``last_lr`` is what it holds.
  """

  def __init__(self, base, warmup, decay_start, decay_steps, power=2.0):
    self.base, self.w, self.s, self.n, self.p = base, warmup, decay_start, decay_steps, power
    self.last_lr = None
    self.step_count = 0

  def step(self):
    """Advances, then returns the rate the next optimizer step uses."""
    self.step_count += 1
    c = self.step_count
    if c < self.w:
      lr = self.base * (1.0 - (self.w - c) / self.w)
      self.last_lr = lr
    elif self.s <= c < self.s + self.n:
      lr = max(1e-7, self.base * ((self.n - (c - self.s)) / self.n) ** self.p)
      self.last_lr = lr
    elif self.n > 0:
      if self.last_lr is None:
        raise AttributeError("the reference fails here: nothing to hold")
      lr = self.last_lr
    else:
      lr = self.base
    return lr


def _reference_rates(base, warmup, start, decay, num_steps, power=2.0):
  policy = ReferencePolicy(base, warmup, start, decay, power)
  return [policy.step() for _ in range(num_steps)]  # rate of the update at steps 0, 1, ...


@pytest.mark.parametrize(
  "warmup,start,decay,power",
  [
    (10, 20, 15, 2.0),  # warmup, hold, decay, hold at the end
    (10, 10, 15, 2.0),  # decay right after warmup
    (4, 4, 0, 2.0),  # warmup only
    (5, 12, 6, 3.0),  # another power
    (0, 0, 8, 2.0),  # decay from the first step
  ],
)
def test_schedule_equals_reference_policy(warmup, start, decay, power):
  base, num_steps = 0.3, 45
  want = _reference_rates(base, warmup, start, decay, num_steps, power)
  schedule = LRSchedule(base, warmup, start, decay, power)
  got = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(num_steps)))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_spot_values_of_the_policy():
  """A few steps worked by hand: W=10, S=20, N=15, base 0.3."""
  schedule = LRSchedule(0.3, 10, 20, 15)
  rate = {s: float(schedule(jnp.int32(s))) for s in (0, 4, 8, 9, 15, 18, 19, 24, 33, 34, 40)}
  assert rate[0] == pytest.approx(0.03)  # (0 + 1) / 10
  assert rate[4] == pytest.approx(0.15)
  assert rate[8] == pytest.approx(0.27)  # the last warmup rate, 9 / 10 ...
  assert rate[9] == rate[15] == rate[18] == pytest.approx(0.27)  # ... held until the decay
  assert rate[19] == pytest.approx(0.3)  # count 20: ((15 - 0) / 15) ** 2
  assert rate[24] == pytest.approx(0.3 * (10 / 15) ** 2)
  assert rate[33] == pytest.approx(0.3 * (1 / 15) ** 2)  # the decay's last count, 34
  assert rate[34] == rate[40] == pytest.approx(0.3 * (1 / 15) ** 2)  # held after it


def test_floor_of_the_decay():
  schedule = LRSchedule(1e-4, 0, 0, 1000)
  assert float(schedule(jnp.int32(998))) == pytest.approx(1e-7)  # 1e-4 * (1/1000)**2 < 1e-7


def test_constant_policy_is_the_plain_float():
  assert learning_rate(0.5) == 0.5
  assert learning_rate(0.5, 1, 1, 0) == 0.5
  assert isinstance(learning_rate(0.5, 2, 2, 0), LRSchedule)


def test_where_the_reference_fails_the_base_rate_is_held():
  """N > 0, no warmup and a later decay: the reference raises; this keeps the base rate."""
  with pytest.raises(AttributeError):
    _reference_rates(0.3, 0, 5, 5, 3)
  schedule = LRSchedule(0.3, 0, 5, 5)
  assert float(schedule(jnp.int32(0))) == pytest.approx(0.3)
  assert float(schedule(jnp.int32(4))) == pytest.approx(0.3)  # count 5: decay's first


@pytest.mark.parametrize(
  "changes,flag",
  [
    (dict(lr_warmup_steps=-1), "--lr_warmup_steps"),
    (dict(lr_decay_steps=-1), "--lr_decay_steps"),
    (dict(lr_warmup_steps=10, lr_decay_start_step=5), "--lr_decay_start_step"),
    (dict(lr_decay_power=0.0), "--lr_decay_power"),
  ],
)
def test_bad_schedule_flags_are_refused(changes, flag):
  with pytest.raises(ConfigError, match=flag):
    Config(**changes).validate(1)
