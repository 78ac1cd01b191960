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
  ],
)
def test_rejected_with_flag_name(changes, flag):
  with pytest.raises(ConfigError, match=flag):
    Config(**changes).validate(num_devices=8)


def test_defaults_are_valid_and_cat_allows_any_bottom_width():
  Config().validate(num_devices=1)
  Config(interaction="cat", bottom_mlp=(64, 32), embedding_dim=16).validate(1)
