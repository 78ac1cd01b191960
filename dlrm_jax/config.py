"""One frozen, typed configuration; the library never reads absl FLAGS.

Field names equal flag names, so every validation message names the flag to fix.
"""

from __future__ import annotations

import dataclasses
import json

from dlrm_jax.model.cross import REFERENCE_NUM_LAYERS
from dlrm_jax.model.interaction import INTERACTIONS
from dlrm_jax.optim.sparse import OPTIMIZERS
from dlrm_jax.sharding.planner import PLANS
from dlrm_jax.sharding.specs import POOLINGS

DATASETS = ("synthetic", "kaggle", "terabyte")
VOCABULARIES = ("train", "reference")
# How a raw categorical value becomes a row: a vocabulary pass, raw % rows, or a managed
# (zero-collision, evicting) map on the devices (dlrm_jax/sharding/managed.py).
ID_MAPPINGS = ("vocabulary", "hash", "managed")
EVICTION_POLICIES = ("lru", "lfu")
# --id_mapping=hash with no --hash_rows and no --max_ind_range: rows per table are
# min(training rows, this), the reference's usual --max-ind-range for Criteo.
HASH_ROWS_CAP = 10_000_000
MODES = ("train", "eval", "predict", "export")
COMPUTE_DTYPES = ("float32", "bfloat16")
# --steps_per_call=0: at most this many steps, and this many examples, per call.
# Each call costs a dispatch and XLA:CPU's malloc of its temporaries (page
# faults when they exceed glibc's 32 MiB mmap threshold); docs/performance.md.
AUTO_MAX_STEPS_PER_CALL = 16
AUTO_SAMPLES_PER_CALL = 32768
_CADENCES = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps")


SHUFFLES = ("auto", "rows", "blocks")


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
  # Share of the built-in data's present categorical values replaced by rare, signal-free ids
  # (dlrm_jax/data/synthetic_tail.py); 0 = none, the data as before the option existed.
  synthetic_tail: float = 0.0
  max_ind_range: int = 0
  min_frequency: int = 1
  data_sub_sample_rate: float = 0.0  # fraction of training-day negatives dropped (reference rule)
  strict: bool = False  # stop at the first bad raw row instead of skipping and counting it
  preprocess_workers: int = 1  # processes parsing raw text (0 = one per core); same output
  vocabulary: str = "train"  # train: training days only, id 0 shared; reference: all days
  # Training order: rows (a permutation of every row), blocks (contiguous blocks read in a
  # seeded order, shuffled within a buffer), auto (blocks where the split is memory-mapped).
  shuffle: str = "auto"
  shuffle_block_rows: int = 1 << 18  # 1 MiB of the label column per read
  shuffle_buffer_blocks: int = 4
  id_mapping: str = "vocabulary"  # vocabulary: a counting pass; hash: raw value % rows
  # --id_mapping=hash rows per table: ("", n) for every table, (name, n) overrides; () = auto.
  hash_rows: tuple[tuple[str, int], ...] = ()
  # --id_mapping=managed ids per table, like hash_rows; () = auto (as hash's rows). Each table
  # has one row more: row 0, the unknown row.
  managed_capacity: tuple[tuple[str, int], ...] = ()
  eviction: str = "lru"  # managed, when a table is full: lru or lfu (decayed counts)
  lfu_decay: float = 0.99  # lfu: a row's count is multiplied by this every step it is not used
  # Model.
  embedding_dim: int = 16
  bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)
  top_mlp: tuple[int, ...] = (512, 256, 1)
  interaction: str = "dot"
  interaction_itself: bool = False
  multi_hot_sizes: tuple[int, ...] = ()  # ids per feature's bag; () = one id per feature
  pooling: str = "sum"  # how a bag's rows combine: sum or mean
  compute_dtype: str = "float32"  # MLP and interaction matmuls; params and tables stay f32
  dcn_num_layers: int = 0  # dcn / dcnv2 cross layers; 0 = the reference's (6 dcn, 3 dcnv2)
  dcn_deep_mlp: tuple[int, ...] = (512, 256)  # dcn only: the deep network beside the cross one
  dcn_low_rank_dim: int = 512  # dcnv2 only: rank of U V (MLPerf 512); 0 = full-rank W
  embedding_mlp: tuple[int, ...] = ()  # MLP over every embedding vector; () = none
  embedding_mlp_shared: bool = True  # one embedding MLP for all features, else one each
  # Optimisation.
  optimizer: str = "sgd"
  # Defaults train the built-in data to within 0.02 AUC of its teacher in a few
  # CPU minutes; experiments/kaggle.flags sets the reference's 128 / 0.1 / 1.
  learning_rate: float = 2.0
  adagrad_eps: float = 1e-10  # the reference's (torch.optim.Adagrad), added after the sqrt
  adagrad_initial_accumulator: float = 0.0
  # Learning-rate policy of the reference (dlrm_jax/optim/schedules.py); all 0: constant.
  lr_warmup_steps: int = 0
  lr_decay_start_step: int = 0
  lr_decay_steps: int = 0
  lr_decay_power: float = 2.0
  batch_size: int = 1024
  eval_batch_size: int = 8192
  num_epochs: int = 3
  max_steps: int = 0  # 0: num_epochs decides
  steps_per_call: int = 0  # train steps per dispatch (a lax.scan over stacked batches); 0: auto
  # Reporting.
  eval_every_steps: int = 0  # 0: evaluate at the end only
  target_auc: float = 0.0  # 0: off; else stop once a validation evaluation reaches it
  log_every_steps: int = 100
  progress: bool = True
  # Compiled programs kept across runs (JAX's persistent cache): auto = the user cache directory
  # ($XDG_CACHE_HOME or ~/.cache)/dlrm-jax/xla, off = none, else a directory.
  compilation_cache: str = "auto"
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
  dry_run: bool = False  # compile every program on abstract inputs, print memory per device, exit

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  def bag_sizes(self, num_features: int) -> tuple[int, ...] | None:
    """Ids per bag of each of ``num_features`` features; None = one-hot."""
    sizes = self.multi_hot_sizes
    if not sizes:
      return None
    _check(
      len(sizes) in (1, num_features),
      f"--multi_hot_sizes={_csv(sizes)}: give one size per sparse feature "
      f"({num_features}) or a single size for all",
    )
    return tuple(sizes) * num_features if len(sizes) == 1 else tuple(sizes)

  def validate(self, num_devices: int = 1) -> Config:
    """Raises ConfigError naming the flag of the first inconsistency found."""
    _check(
      self.dataset in DATASETS, f"--dataset={self.dataset!r}: must be one of {', '.join(DATASETS)}"
    )
    _check(self.mode in MODES, f"--mode={self.mode!r}: must be one of {', '.join(MODES)}")
    _check(
      not self.dry_run or self.mode == "train",
      f"--dry_run checks a training run's memory; not with --mode={self.mode}",
    )
    _check(
      self.device_memory_gb >= 0, f"--device_memory_gb={self.device_memory_gb:g}: must be >= 0"
    )
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
    _check(
      self.pooling in POOLINGS,
      f"--pooling={self.pooling!r}: must be one of {', '.join(POOLINGS)}",
    )
    _check(
      all(size >= 1 for size in self.multi_hot_sizes),
      f"--multi_hot_sizes={_csv(self.multi_hot_sizes)}: every size must be >= 1",
    )
    _check(
      self.mode != "export" or all(size == 1 for size in self.multi_hot_sizes),
      f"--mode=export serves one id per feature (sparse i32[N, 26]); the model was trained "
      f"with --multi_hot_sizes={_csv(self.multi_hot_sizes)} (bags), which export does not "
      f"support yet: score it with --mode=eval or --mode=predict",
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
    if self.interaction in ("dot", "dcn", "dcnv2"):
      # dot: bottom_out is one of the vectors whose dot products are taken;
      # dcn / dcnv2: x0 stacks [bottom_out, emb_1..emb_T] as (T+1) vectors of size D.
      _check(
        self.bottom_mlp[-1] == self.embedding_dim,
        f"--bottom_mlp={_csv(self.bottom_mlp)} ends in {self.bottom_mlp[-1]} but "
        f"--embedding_dim={self.embedding_dim}; with --interaction={self.interaction} "
        f"they must be equal",
      )
    self._validate_dense_extras()
    _check(self.learning_rate > 0, f"--learning_rate={self.learning_rate}: must be > 0")
    _check(
      self.adagrad_eps > 0,
      f"--adagrad_eps={self.adagrad_eps}: must be > 0 (with 0, a row whose summed gradient "
      "is 0 and whose accumulator is 0 becomes NaN)",
    )
    _check(
      self.adagrad_initial_accumulator >= 0,
      f"--adagrad_initial_accumulator={self.adagrad_initial_accumulator}: must be >= 0",
    )
    for name in ("lr_warmup_steps", "lr_decay_start_step", "lr_decay_steps"):
      _check(getattr(self, name) >= 0, f"--{name}={getattr(self, name)}: must be >= 0")
    _check(
      self.lr_decay_start_step >= self.lr_warmup_steps,
      f"--lr_decay_start_step={self.lr_decay_start_step} is before the end of "
      f"--lr_warmup_steps={self.lr_warmup_steps}: the warmup must finish before the decay "
      "starts (the reference's rule; with no decay, set it to the warmup length)",
    )
    _check(self.lr_decay_power > 0, f"--lr_decay_power={self.lr_decay_power}: must be > 0")
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
    _check(
      self.shuffle in SHUFFLES,
      f"--shuffle={self.shuffle!r}: must be one of {', '.join(SHUFFLES)}",
    )
    for name in ("shuffle_block_rows", "shuffle_buffer_blocks"):
      _check(getattr(self, name) >= 1, f"--{name}={getattr(self, name)}: must be >= 1")
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
    _check(
      bool(self.compilation_cache.strip()),
      "--compilation_cache is empty: give auto, off or a directory",
    )
    _check(
      self.preprocess_workers >= 0,
      f"--preprocess_workers={self.preprocess_workers}: must be >= 0 (0 = one per core)",
    )
    _check(self.log_every_steps >= 1, f"--log_every_steps={self.log_every_steps}: must be >= 1")
    _check(
      self.compute_dtype in COMPUTE_DTYPES,
      f"--compute_dtype={self.compute_dtype!r}: must be one of {', '.join(COMPUTE_DTYPES)}",
    )
    k = self.steps_per_call
    _check(k >= 0, f"--steps_per_call={k}: must be >= 1, or 0 for auto")
    # Logs, evaluations and checkpoints happen between calls, so their cadences
    # must fall on call boundaries (auto picks a K for which they do).
    for name in _CADENCES:
      value = getattr(self, name)
      _check(
        k == 0 or value % k == 0,
        f"--{name}={value} is not a multiple of --steps_per_call={k}: logs, evaluations "
        f"and checkpoints happen between calls",
      )
    _check(self.min_frequency >= 1, f"--min_frequency={self.min_frequency}: must be >= 1")
    _check(
      0.0 <= self.data_sub_sample_rate < 1.0,
      f"--data_sub_sample_rate={self.data_sub_sample_rate}: must be in [0, 1)",
    )
    _check(
      self.vocabulary in VOCABULARIES,
      f"--vocabulary={self.vocabulary!r}: must be one of {', '.join(VOCABULARIES)}",
    )
    _check(
      self.vocabulary == "train" or self.min_frequency == 1,
      f"--min_frequency={self.min_frequency} needs --vocabulary=train: the reference's "
      f"vocabulary gives every value its own row",
    )
    self._validate_id_mapping()
    _check(0.0 <= self.target_auc <= 1.0, f"--target_auc={self.target_auc}: must be in [0, 1]")
    _check(
      self.synthetic_rows >= 1000,
      f"--synthetic_rows={self.synthetic_rows}: must be >= 1000 (7 days of data)",
    )
    self._validate_synthetic_tail()
    return self

  def _validate_dense_extras(self) -> None:
    """The dcn / dcnv2 and embedding-MLP flags; a flag its model does not use is refused."""
    default = Config()
    uses = {
      "dcn_num_layers": ("dcn", "dcnv2"),
      "dcn_deep_mlp": ("dcn",),
      "dcn_low_rank_dim": ("dcnv2",),
    }
    for name, kinds in uses.items():
      value = getattr(self, name)
      _check(
        self.interaction in kinds or value == getattr(default, name),
        f"--{name}={_csv(value) if isinstance(value, tuple) else value}: used only with "
        f"--interaction={' or '.join(kinds)}, not with --interaction={self.interaction}",
      )
    _check(
      not self.interaction_itself or self.interaction == "dot",
      f"--interaction_itself: used only with --interaction=dot, not {self.interaction}",
    )
    _check(self.dcn_num_layers >= 0, f"--dcn_num_layers={self.dcn_num_layers}: must be >= 0")
    _check(self.dcn_low_rank_dim >= 0, f"--dcn_low_rank_dim={self.dcn_low_rank_dim}: must be >= 0")
    if self.interaction == "dcn":
      _check(
        len(self.dcn_deep_mlp) >= 1 and min(self.dcn_deep_mlp) >= 1,
        f"--dcn_deep_mlp={_csv(self.dcn_deep_mlp)}: needs at least one positive width",
      )
    if self.embedding_mlp:
      _check(
        min(self.embedding_mlp) >= 1,
        f"--embedding_mlp={_csv(self.embedding_mlp)}: widths must be positive",
      )
      _check(
        self.embedding_mlp[-1] == self.embedding_dim,
        f"--embedding_mlp={_csv(self.embedding_mlp)} ends in {self.embedding_mlp[-1]} but "
        f"--embedding_dim={self.embedding_dim}; they must be equal (the interaction sees "
        f"vectors of --embedding_dim)",
      )
    _check(
      self.embedding_mlp_shared or bool(self.embedding_mlp),
      "--noembedding_mlp_shared: used only with a non-empty --embedding_mlp",
    )

  def _validate_synthetic_tail(self) -> None:
    tail = self.synthetic_tail
    _check(0.0 <= tail < 1.0, f"--synthetic_tail={tail}: must be in [0, 1)")
    _check(
      tail == 0.0 or self.dataset == "synthetic",
      f"--synthetic_tail={tail}: used only with --dataset=synthetic, not {self.dataset}",
    )
    _check(
      tail == 0.0 or not self.multi_hot_sizes,
      f"--synthetic_tail={tail}: one-hot built-in data only, not with --multi_hot_sizes",
    )

  def _validate_id_mapping(self) -> None:
    _check(
      self.id_mapping in ID_MAPPINGS,
      f"--id_mapping={self.id_mapping!r}: must be one of {', '.join(ID_MAPPINGS)}",
    )
    _check(
      self.id_mapping == "hash" or not self.hash_rows,
      f"--hash_rows: used only with --id_mapping=hash (not {self.id_mapping})",
    )
    managed = self.id_mapping == "managed"
    _check(
      managed or not self.managed_capacity,
      f"--managed_capacity: used only with --id_mapping=managed (not {self.id_mapping})",
    )
    _check(
      self.eviction in EVICTION_POLICIES,
      f"--eviction={self.eviction!r}: must be one of {', '.join(EVICTION_POLICIES)}",
    )
    _check(0.0 < self.lfu_decay <= 1.0, f"--lfu_decay={self.lfu_decay}: must be in (0, 1]")
    # Policy flags that would change nothing are refused, not ignored.
    _check(
      managed or self.eviction == Config.eviction,
      f"--eviction={self.eviction}: used only with --id_mapping=managed (not {self.id_mapping})",
    )
    _check(
      self.eviction == "lfu" or self.lfu_decay == Config.lfu_decay,
      f"--lfu_decay={self.lfu_decay}: used only with --eviction=lfu (not {self.eviction})",
    )
    if self.id_mapping == "vocabulary":
      return
    # Raw values: nothing is counted, so no option of the counting pass applies.
    mode = f"--id_mapping={self.id_mapping}"
    _check(
      self.vocabulary == "train",
      f"--vocabulary={self.vocabulary} needs --id_mapping=vocabulary: {mode} builds no vocabulary",
    )
    _check(
      self.min_frequency == 1,
      f"--min_frequency={self.min_frequency} needs --id_mapping=vocabulary: {mode} counts no "
      f"values",
    )
    _check(
      not self.multi_hot_sizes,
      "--multi_hot_sizes needs --id_mapping=vocabulary: bags are drawn from vocabulary ids",
    )
    _check(
      self.dataset != "terabyte",
      f"{mode}: not yet for --dataset=terabyte (its per-day cache counts values); use "
      f"--dataset=kaggle or synthetic",
    )
    for name, rows in self.hash_rows:
      _check(
        1 <= rows < 2**31,
        f"--hash_rows={name + ':' if name else ''}{rows}: rows must be in [1, 2^31)",
      )
    for name, ids in self.managed_capacity:
      _check(
        1 <= ids < 2**31 - 1,
        f"--managed_capacity={name + ':' if name else ''}{ids}: a capacity must be in "
        f"[1, 2^31 - 1)",
      )
    if managed:
      # Only row-wise tables keep a map beside their rows (sharding/managed.py).
      _check(
        self.sharding in ("auto", "row"),
        f"--sharding={self.sharding}: --id_mapping=managed tables are row-wise; use "
        f"--sharding=row (or auto, which makes every managed table row-wise)",
      )
      for name, plan in self.table_sharding:
        _check(
          plan == "row",
          f"--table_sharding={name}:{plan}: --id_mapping=managed tables are row-wise; use "
          f"{name}:row or leave {name} out",
        )

  @property
  def raw_ids(self) -> bool:
    """The data keeps raw categorical values (--id_mapping=hash or managed): one pass."""
    return self.id_mapping != "vocabulary"

  @property
  def data_id_mapping(self) -> str:
    """The preprocessed data's id_mapping: hash and managed read the same raw values."""
    return "hash" if self.raw_ids else "vocabulary"

  @property
  def resolved_steps_per_call(self) -> int:
    """--steps_per_call, with 0 replaced by ``auto_steps_per_call`` for this run's cadences."""
    if self.steps_per_call:
      return self.steps_per_call
    return auto_steps_per_call(self.batch_size, [getattr(self, n) for n in _CADENCES])

  @property
  def resolved_dcn_num_layers(self) -> int:
    """--dcn_num_layers, with 0 replaced by the reference depth of --interaction (else 0)."""
    return self.dcn_num_layers or REFERENCE_NUM_LAYERS.get(self.interaction, 0)


def auto_steps_per_call(batch_size: int, cadences=()) -> int:
  """The largest K <= AUTO_MAX_STEPS_PER_CALL that divides every non-zero cadence and
  keeps a call within AUTO_SAMPLES_PER_CALL examples (large batches gain nothing
  from fewer dispatches, and their stacked batches would take memory)."""
  cap = min(AUTO_MAX_STEPS_PER_CALL, max(1, AUTO_SAMPLES_PER_CALL // batch_size))
  return max(k for k in range(1, cap + 1) if all(v % k == 0 for v in cadences if v > 0))


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _csv(values) -> str:
  return ",".join(map(str, values))
