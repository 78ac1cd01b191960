"""Inconsistent configurations are refused, naming the flag, before any work starts."""

import pytest

from dlrm_jax.config import Config, ConfigError


@pytest.mark.parametrize(
  "changes,flag",
  [
    (dict(bottom_mlp=(512, 256, 64), embedding_dim=16), "--bottom_mlp"),
    (dict(batch_size=100), "--batch_size"),
    (dict(eval_batch_size=12), "--eval_batch_size"),
    (dict(dataset="imagenet"), "--dataset"),
    (dict(optimizer="adam"), "--optimizer"),
    (dict(top_mlp=(512, 2)), "--top_mlp"),
    (dict(interaction="sum"), "--interaction"),
    (dict(learning_rate=0.0), "--learning_rate"),
    (dict(learning_rate=-1.0), "--learning_rate"),
    (dict(adagrad_eps=0.0), "--adagrad_eps"),
    (dict(adagrad_initial_accumulator=-0.1), "--adagrad_initial_accumulator"),
    (dict(sharding="diagonal"), "--sharding"),
    (dict(multi_hot_sizes=(3, 0)), "--multi_hot_sizes"),
    (dict(pooling="max"), "--pooling"),
    (dict(multi_hot_sizes=(3,), mode="export"), "--multi_hot_sizes"),
    (dict(compute_dtype="float16"), "--compute_dtype"),
    (dict(steps_per_call=-1), "--steps_per_call"),
    (dict(steps_per_call=4, log_every_steps=10), "--log_every_steps=10 is not a multiple"),
    (dict(steps_per_call=4, log_every_steps=8, eval_every_steps=6), "--eval_every_steps"),
    (dict(steps_per_call=3, log_every_steps=3), "--checkpoint_every_steps=1000"),
    (dict(synthetic_tail=1.0), "--synthetic_tail=1.0: must be in"),
    (dict(synthetic_tail=-0.1), "--synthetic_tail"),
    (dict(synthetic_tail=0.5, dataset="kaggle"), "--synthetic_tail=0.5: used only"),
    (dict(synthetic_tail=0.5, multi_hot_sizes=(2,)), "--synthetic_tail=0.5: one-hot"),
  ],
)
def test_rejected_with_flag_name(changes, flag):
  with pytest.raises(ConfigError, match=flag):
    Config(**changes).validate(num_devices=8)


def test_defaults_are_valid_and_cat_allows_any_bottom_width():
  Config().validate(num_devices=1)
  Config(interaction="cat", bottom_mlp=(64, 32), embedding_dim=16).validate(1)


@pytest.mark.parametrize(
  "changes,k",
  [
    # kaggle.flags: log 1024, checkpoint 20000, no periodic evaluation.
    (dict(batch_size=128, log_every_steps=1024, checkpoint_every_steps=20000), 16),
    # synthetic.flags: log 100, evaluate and checkpoint every 1000.
    (dict(batch_size=1024, log_every_steps=100, eval_every_steps=1000), 10),
    (dict(log_every_steps=7, checkpoint_every_steps=0), 7),
    (dict(log_every_steps=7, checkpoint_every_steps=10), 1),
    (dict(batch_size=4096, log_every_steps=100), 5),  # at most 32768 examples a call
    (dict(batch_size=32768, log_every_steps=100), 1),
    (dict(steps_per_call=4, log_every_steps=8, checkpoint_every_steps=8), 4),  # given
  ],
)
def test_auto_steps_per_call_divides_every_cadence(changes, k):
  config = Config(**changes).validate(num_devices=1)
  assert config.resolved_steps_per_call == k


def test_multi_hot_sizes_one_for_all_or_one_per_feature():
  assert Config().bag_sizes(3) is None
  assert Config(multi_hot_sizes=(2,)).bag_sizes(3) == (2, 2, 2)
  assert Config(multi_hot_sizes=(1, 2, 3)).bag_sizes(3) == (1, 2, 3)
  with pytest.raises(ConfigError, match="--multi_hot_sizes=1,2: give one size per sparse"):
    Config(multi_hot_sizes=(1, 2)).bag_sizes(3)
