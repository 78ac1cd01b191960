"""One frozen, typed configuration; the library never reads absl FLAGS.

Field names equal flag names, so every validation message names the flag to fix.
"""

from __future__ import annotations

import dataclasses
import json

from dlrm_jax.interaction import INTERACTIONS
from dlrm_jax.planner import PLANS
from dlrm_jax.sparse_optim import OPTIMIZERS

DATASETS = ("synthetic", "kaggle", "terabyte")
MODES = ("train", "eval", "predict", "export")


class ConfigError(ValueError):
  """An inconsistent configuration, reported before any work starts."""


@dataclasses.dataclass(frozen=True)
class Config:
  # Run.
  workdir: str = "runs/default"
  mode: str = "train"
  seed: int = 0
  # Data.
  dataset: str = "synthetic"
  data_dir: str = "data"
  synthetic_rows: int = 1_000_000
  synthetic_seed: int = 0
  max_ind_range: int = 0
  min_frequency: int = 1
  data_sub_sample_rate: float = 0.0  # fraction of training-day negatives dropped (reference rule)
  strict: bool = False  # stop at the first bad raw row instead of skipping and counting it
  # Model.
  embedding_dim: int = 16
  bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)
  top_mlp: tuple[int, ...] = (512, 256, 1)
  interaction: str = "dot"
  interaction_itself: bool = False
  # Optimisation.
  optimizer: str = "sgd"
  # Defaults train the built-in data to within 0.02 AUC of its teacher in a few
  # CPU minutes; experiments/kaggle.flags sets the reference's 128 / 0.1 / 1.
  learning_rate: float = 2.0
  adagrad_eps: float = 1e-7
  adagrad_initial_accumulator: float = 0.0
  batch_size: int = 1024
  eval_batch_size: int = 8192
  num_epochs: int = 3
  max_steps: int = 0  # 0: num_epochs decides
  # Reporting.
  eval_every_steps: int = 0  # 0: evaluate at the end only
  target_auc: float = 0.0  # 0: off; else stop once a validation evaluation reaches it
  log_every_steps: int = 100
  progress: bool = True
  # Checkpoints and use of saved models.
  checkpoint_every_steps: int = 1000  # 0: only at the end (and on preemption)
  keep_checkpoints: int = 3
  checkpoint: str = ""  # eval / predict / export: latest, best, a workdir or a step directory
  split: str = "test"  # eval / predict: the preprocessed split to score
  predict_file: str = ""  # predict: an unlabeled raw Criteo file (Kaggle test.txt)
  predictions_file: str = ""  # predict: output CSV; "" = workdir/predictions_<split>.csv
  first_test_id: int = 60_000_000  # predict: Id of the first line of --predict_file
  export_dir: str = ""  # export: "" = workdir/export
  # Sharding.
  mesh_shape: tuple[int, ...] = ()
  sharding: str = "auto"
  table_sharding: tuple[tuple[str, str], ...] = ()
  device_memory_gb: float = 0.0  # 0: no limit checked

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  def validate(self, num_devices: int = 1) -> Config:
    """Raises ConfigError naming the flag of the first inconsistency found."""
    _check(
      self.dataset in DATASETS, f"--dataset={self.dataset!r}: must be one of {', '.join(DATASETS)}"
    )
    _check(self.mode in MODES, f"--mode={self.mode!r}: must be one of {', '.join(MODES)}")
    _check(
      self.optimizer in OPTIMIZERS,
      f"--optimizer={self.optimizer!r}: must be one of {', '.join(OPTIMIZERS)}",
    )
    _check(
      self.interaction in INTERACTIONS,
      f"--interaction={self.interaction!r}: must be one of {', '.join(INTERACTIONS)}",
    )
    _check(
      self.sharding == "auto" or self.sharding in PLANS,
      f"--sharding={self.sharding!r}: must be auto or one of {', '.join(PLANS)}",
    )
    _check(self.embedding_dim >= 1, f"--embedding_dim={self.embedding_dim}: must be >= 1")
    _check(
      len(self.bottom_mlp) >= 1 and min(self.bottom_mlp) >= 1,
      f"--bottom_mlp={_csv(self.bottom_mlp)}: needs at least one positive width",
    )
    _check(
      len(self.top_mlp) >= 1 and min(self.top_mlp) >= 1,
      f"--top_mlp={_csv(self.top_mlp)}: needs at least one positive width",
    )
    _check(
      self.top_mlp[-1] == 1, f"--top_mlp={_csv(self.top_mlp)}: the last width must be 1 (the logit)"
    )
    if self.interaction == "dot":
      _check(
        self.bottom_mlp[-1] == self.embedding_dim,
        f"--bottom_mlp={_csv(self.bottom_mlp)} ends in {self.bottom_mlp[-1]} but "
        f"--embedding_dim={self.embedding_dim}; with --interaction=dot they must be equal",
      )
    _check(self.learning_rate > 0, f"--learning_rate={self.learning_rate}: must be > 0")
    for name in ("batch_size", "eval_batch_size"):
      value = getattr(self, name)
      _check(value >= 1, f"--{name}={value}: must be >= 1")
      _check(
        value % num_devices == 0,
        f"--{name}={value}: must be divisible by the number of devices ({num_devices})",
      )
    _check(
      self.num_epochs >= 1 or self.max_steps >= 1,
      "--num_epochs and --max_steps are both 0: nothing to train",
    )
    for name in ("max_steps", "eval_every_steps", "max_ind_range", "synthetic_seed"):
      _check(getattr(self, name) >= 0, f"--{name}={getattr(self, name)}: must be >= 0")
    _check(
      self.checkpoint_every_steps >= 0,
      f"--checkpoint_every_steps={self.checkpoint_every_steps}: must be >= 0",
    )
    _check(self.keep_checkpoints >= 1, f"--keep_checkpoints={self.keep_checkpoints}: must be >= 1")
    _check(
      self.split in ("train", "validation", "test"),
      f"--split={self.split!r}: must be train, validation or test",
    )
    _check(self.log_every_steps >= 1, f"--log_every_steps={self.log_every_steps}: must be >= 1")
    _check(self.min_frequency >= 1, f"--min_frequency={self.min_frequency}: must be >= 1")
    _check(
      0.0 <= self.data_sub_sample_rate < 1.0,
      f"--data_sub_sample_rate={self.data_sub_sample_rate}: must be in [0, 1)",
    )
    _check(0.0 <= self.target_auc <= 1.0, f"--target_auc={self.target_auc}: must be in [0, 1]")
    _check(
      self.synthetic_rows >= 1000,
      f"--synthetic_rows={self.synthetic_rows}: must be >= 1000 (7 days of data)",
    )
    return self


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _csv(values) -> str:
  return ",".join(map(str, values))
