"""absl flag definitions and their conversion into a Config; nothing else reads FLAGS."""

from __future__ import annotations

import dataclasses

from absl import flags

from dlrm_jax.config import (
  COMPUTE_DTYPES,
  DATASETS,
  EVICTION_POLICIES,
  HASH_ROWS_CAP,
  ID_MAPPINGS,
  MODES,
  SHUFFLES,
  VOCABULARIES,
  Config,
  ConfigError,
)
from dlrm_jax.model.interaction import INTERACTIONS
from dlrm_jax.optim.sparse import OPTIMIZERS
from dlrm_jax.sharding.mesh import parse_mesh_shape
from dlrm_jax.sharding.planner import PLANS
from dlrm_jax.sharding.specs import POOLINGS

_D = Config()  # defaults live in one place: the dataclass

# Run.
flags.DEFINE_string(
  "workdir",
  _D.workdir,
  "Output directory: config.json, metrics.jsonl, tensorboard/, curves.png, checkpoints/.",
)
flags.DEFINE_enum(
  "mode",
  _D.mode,
  MODES,
  "train (resumes from --workdir's latest checkpoint, then evaluates); eval "
  "(--split of --checkpoint); predict (scores to a CSV); export (jax.export "
  "artifact).",
)
flags.DEFINE_integer("seed", _D.seed, "Seed for initialisation and batch order.")
# Data.
flags.DEFINE_enum(
  "dataset",
  _D.dataset,
  DATASETS,
  "synthetic: built-in Criteo-format data (no download); kaggle / terabyte: "
  "raw Criteo files under --data_dir (see data/README.md).",
)
flags.DEFINE_string("data_dir", _D.data_dir, "Root of raw and preprocessed datasets.")
flags.DEFINE_integer(
  "synthetic_rows",
  _D.synthetic_rows,
  "Rows of built-in data to generate (7 days: 6 train, 1 test+validation).",
)
flags.DEFINE_integer("synthetic_seed", _D.synthetic_seed, "Seed of the built-in data's teacher.")
flags.DEFINE_float(
  "synthetic_tail",
  _D.synthetic_tail,
  "Fraction in [0, 1) of the built-in data's categorical values replaced by rare ids that carry "
  "no signal (each about once in the file), so that table capacity matters; default 0: none.",
)
flags.DEFINE_enum(
  "shuffle",
  _D.shuffle,
  SHUFFLES,
  "Training order. rows: every epoch a permutation of all rows (random reads; for data in "
  "RAM); blocks: a seeded order of blocks of --shuffle_block_rows contiguous rows, read "
  "sequentially and shuffled within a buffer of --shuffle_buffer_blocks blocks (for data on "
  "disk); auto: blocks when the training split is memory-mapped (4 GiB or more), else rows.",
)
flags.DEFINE_integer(
  "shuffle_block_rows",
  _D.shuffle_block_rows,
  "Rows per block of --shuffle=blocks (one contiguous read per column file); default 262144.",
)
flags.DEFINE_integer(
  "shuffle_buffer_blocks",
  _D.shuffle_buffer_blocks,
  "Blocks shuffled together by --shuffle=blocks (memory: about 3 buffers of rows); default 4.",
)
flags.DEFINE_integer(
  "max_ind_range",
  _D.max_ind_range,
  "Categorical values are taken modulo this before building vocabularies; 0 = no limit.",
)
flags.DEFINE_integer(
  "min_frequency", _D.min_frequency, "Values seen fewer times in training share one id."
)
flags.DEFINE_float(
  "data_sub_sample_rate",
  _D.data_sub_sample_rate,
  "Fraction of negative rows of the training days dropped while preprocessing "
  "(reference rule: a negative is dropped when its uniform draw < rate; "
  "Terabyte: 0.875). 0 = keep all.",
)
flags.DEFINE_bool(
  "strict",
  _D.strict,
  "Preprocessing: stop at the first bad raw row (printing file:line) instead of "
  "skipping and counting it.",
)
flags.DEFINE_integer(
  "preprocess_workers",
  _D.preprocess_workers,
  "Preprocessing: processes that parse the raw Criteo text at once (0 = one per available "
  "core; 1 = this process, parsing in a thread beside the counting). The output is the same "
  f"bytes for any count. Default {_D.preprocess_workers}.",
)
flags.DEFINE_enum(
  "vocabulary",
  _D.vocabulary,
  VOCABULARIES,
  "Categorical ids. train: values of the training days (count >= --min_frequency) get "
  "rows 1..V, row 0 is missing, unseen or rare; reference: like facebookresearch/dlrm, every "
  "value of all days (test and validation too; missing = the value 0) gets its own row. "
  "Default train.",
)
flags.DEFINE_enum(
  "id_mapping",
  _D.id_mapping,
  ID_MAPPINGS,
  "How a raw categorical value becomes a table row. vocabulary: a counting pass builds "
  "--vocabulary; hash: preprocessing keeps the raw 32-bit values (no counting pass) and row = "
  "value % --hash_rows (a missing value is the value 0); managed: the same raw values, each "
  "given its own row by a map on the devices, evicting by --eviction when a table holds "
  "--managed_capacity ids. Default vocabulary.",
)
flags.DEFINE_list(
  "hash_rows",
  [],
  "--id_mapping=hash: rows per table, e.g. 1000000 for every table, or 1000000,C3:5000 with "
  "per-table overrides. Default (empty): --max_ind_range if set, else min(training rows, "
  f"{HASH_ROWS_CAP:,}).",
)
flags.DEFINE_list(
  "managed_capacity",
  [],
  "--id_mapping=managed: ids each table holds before it evicts, e.g. 1000000 for every table, "
  "or 1000000,C3:5000 with per-table overrides; each table gets one more row (row 0, for ids it "
  "does not hold). Default (empty): --max_ind_range if set, else min(training rows, "
  f"{HASH_ROWS_CAP:,}), so no training id is ever evicted.",
)
flags.DEFINE_enum(
  "eviction",
  _D.eviction,
  EVICTION_POLICIES,
  "--id_mapping=managed, when a table is full: lru evicts the least recently used row, lfu the "
  "lowest use count decayed by --lfu_decay per step. Default lru.",
)
flags.DEFINE_float(
  "lfu_decay", _D.lfu_decay, "--eviction=lfu: a row's count is multiplied by this every step."
)
# Model.
flags.DEFINE_integer("embedding_dim", _D.embedding_dim, "Width of every embedding row.")
flags.DEFINE_list(
  "bottom_mlp",
  list(map(str, _D.bottom_mlp)),
  "Bottom MLP widths after the 13 dense inputs; ends in --embedding_dim for dot, dcn, dcnv2.",
)
flags.DEFINE_list(
  "top_mlp",
  list(map(str, _D.top_mlp)),
  "Top MLP widths after the interaction; ends in 1 (the logit). With dcn: the layers "
  "on [cross output, deep output]; the paper's DCN (straight to the logit) is --top_mlp=1.",
)
flags.DEFINE_enum(
  "interaction",
  _D.interaction,
  INTERACTIONS,
  "dot: pairwise dot products (paper); cat: concatenation; dcn: DCN (Wang et al. 2017), "
  "cross and deep networks side by side on [bottom_out, emb_1..emb_T], then --top_mlp; "
  "dcnv2: DCN-V2 cross network (TorchRec DLRM_DCN, MLPerf) under the top MLP.",
)
flags.DEFINE_bool(
  "interaction_itself",
  _D.interaction_itself,
  "dot: also keep each vector's dot product with itself.",
)
flags.DEFINE_list(
  "multi_hot_sizes",
  [],
  "Ids per example of each sparse feature's bag (multi-hot), e.g. 3,2,1,...; one "
  "number = the same for all; empty (default) = one id per feature. A bag with "
  "fewer ids pads with -1.",
)
flags.DEFINE_enum(
  "pooling", _D.pooling, POOLINGS, "How a bag's rows combine into one vector (default sum)."
)
flags.DEFINE_enum(
  "compute_dtype",
  _D.compute_dtype,
  COMPUTE_DTYPES,
  "dtype of the MLP and interaction matmuls (bfloat16: the fast path on GPUs); "
  "parameters, tables, optimizer state, loss and sparse updates stay float32.",
)
flags.DEFINE_integer(
  "dcn_num_layers",
  _D.dcn_num_layers,
  "dcn / dcnv2: number of cross layers; 0 = the reference's (6 for dcn as in the DLRM "
  "paper, 3 for dcnv2 as in MLPerf).",
)
flags.DEFINE_list(
  "dcn_deep_mlp",
  list(map(str, _D.dcn_deep_mlp)),
  "dcn only: widths of the deep network on [bottom_out, emb_1..emb_T], ReLU after each "
  "(paper: 512,256).",
)
flags.DEFINE_integer(
  "dcn_low_rank_dim",
  _D.dcn_low_rank_dim,
  "dcnv2 only: rank r of each cross layer's U V (MLPerf: 512); 0 = a full-rank W.",
)
flags.DEFINE_list(
  "embedding_mlp",
  list(map(str, _D.embedding_mlp)),
  "Widths of an MLP applied to every embedding vector before the interaction (ReLU "
  "between layers, none after the last); ends in --embedding_dim. Empty = none.",
)
flags.DEFINE_bool(
  "embedding_mlp_shared",
  _D.embedding_mlp_shared,
  "One --embedding_mlp shared by all features; --noembedding_mlp_shared: one per feature.",
)
# Optimisation.
flags.DEFINE_enum(
  "optimizer",
  _D.optimizer,
  OPTIMIZERS,
  "Table optimizer (sparse, touched rows only); the MLPs use the optax "
  "equivalent (adagrad for rowwise_adagrad).",
)
flags.DEFINE_float("learning_rate", _D.learning_rate, "Learning rate of tables and MLPs.")
flags.DEFINE_float(
  "adagrad_eps",
  _D.adagrad_eps,
  "Adagrad epsilon, added after the square root as in torch.optim.Adagrad: "
  "w -= lr * g / (sqrt(a) + eps). Must be > 0.",
)
flags.DEFINE_float(
  "adagrad_initial_accumulator",
  _D.adagrad_initial_accumulator,
  "Initial value of every Adagrad accumulator a (per element, or per row for "
  "rowwise_adagrad); the reference's is 0. Must be >= 0.",
)
flags.DEFINE_integer(
  "lr_warmup_steps",
  _D.lr_warmup_steps,
  "Steps of linear learning-rate warmup (the reference's LRPolicyScheduler: the "
  "update at 0-based step s uses lr * (s + 1) / W while s + 1 < W); 0 = none.",
)
flags.DEFINE_integer(
  "lr_decay_start_step",
  _D.lr_decay_start_step,
  "Step at which the polynomial decay starts; must be >= --lr_warmup_steps (as in "
  "the reference, even without decay).",
)
flags.DEFINE_integer(
  "lr_decay_steps",
  _D.lr_decay_steps,
  "Steps N over which the rate decays as lr * ((N - t) / N) ** power at t = s + 1 - "
  "start, floored at 1e-7, then held; 0 = no decay.",
)
flags.DEFINE_float(
  "lr_decay_power", _D.lr_decay_power, "Power of the decay (the reference's is 2)."
)
flags.DEFINE_integer(
  "batch_size", _D.batch_size, "Global training batch (all devices, all processes)."
)
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Global evaluation batch.")
flags.DEFINE_integer("num_epochs", _D.num_epochs, "Passes over the training split.")
flags.DEFINE_integer("max_steps", _D.max_steps, "Stop after this many steps; 0 = num_epochs.")
flags.DEFINE_integer(
  "steps_per_call",
  _D.steps_per_call,
  "Train steps per device dispatch (a lax.scan over that many stacked batches; "
  "same result as 1). --log_every_steps, --eval_every_steps and "
  "--checkpoint_every_steps must be multiples of it. 0 (default) = auto: the largest "
  "K <= 16 that divides them, with at most 32768 examples per call.",
)
# Reporting.
flags.DEFINE_integer(
  "eval_every_steps",
  _D.eval_every_steps,
  "Evaluate on validation every N steps; 0 = at the end only.",
)
flags.DEFINE_float(
  "target_auc",
  _D.target_auc,
  "Stop training once a validation evaluation reaches this AUC (MLPerf: 0.8025); 0 = off.",
)
flags.DEFINE_integer(
  "log_every_steps", _D.log_every_steps, "Log training loss and samples/s every N steps."
)
flags.DEFINE_bool("progress", _D.progress, "Show a progress bar.")
flags.DEFINE_string(
  "compilation_cache",
  _D.compilation_cache,
  "Keep compiled programs across runs (JAX's persistent compilation cache) so a rerun skips "
  "compilation: auto = $XDG_CACHE_HOME (or ~/.cache)/dlrm-jax/xla, off = no cache, or a "
  f"directory. Default {_D.compilation_cache}.",
)
# Checkpoints and use of saved models.
flags.DEFINE_integer(
  "checkpoint_every_steps",
  _D.checkpoint_every_steps,
  "Save a checkpoint to --workdir/checkpoints every N steps (also at the end, "
  "at each validation and on SIGTERM/SIGINT); 0 = at the end only.",
)
flags.DEFINE_integer(
  "keep_checkpoints",
  _D.keep_checkpoints,
  "Keep the last N checkpoints (the best by validation AUC is kept too).",
)
flags.DEFINE_string(
  "checkpoint",
  _D.checkpoint,
  "eval/predict/export: latest or best (of --workdir), a workdir, its "
  "checkpoints/ directory or checkpoints/STEP; empty = latest.",
)
flags.DEFINE_string(
  "split", _D.split, "eval/predict: preprocessed split to score (train, validation, test)."
)
flags.DEFINE_string(
  "predict_file",
  _D.predict_file,
  "predict: an unlabeled raw Criteo file (Kaggle test.txt) to score into a "
  "submission CSV instead of --split.",
)
flags.DEFINE_string(
  "predictions_file",
  _D.predictions_file,
  "predict: output CSV (Id,Predicted); empty = --workdir/predictions_SPLIT.csv "
  "or --workdir/submission.csv.",
)
flags.DEFINE_integer(
  "first_test_id",
  _D.first_test_id,
  "predict: Id of the first line of --predict_file (Kaggle: 60000000).",
)
flags.DEFINE_string(
  "export_dir",
  _D.export_dir,
  "export: directory for the serialized inference function; empty = --workdir/export.",
)
# Sharding.
flags.DEFINE_string(
  "mesh_shape",
  ",".join(map(str, _D.mesh_shape)),
  "N (1-D: every device trains the MLPs and owns tables) or DATA,MODEL; empty = all devices, 1-D.",
)
flags.DEFINE_enum(
  "sharding",
  _D.sharding,
  ("auto",) + PLANS,
  "Embedding plan for every table; auto = the planner decides.",
)
flags.DEFINE_list("table_sharding", [], "Per-table plan overrides, e.g. C3:row,C12:column.")
flags.DEFINE_float(
  "device_memory_gb",
  _D.device_memory_gb,
  "Per-device memory in GiB: the planner refuses plans whose tables and optimizer state "
  "do not fit, --dry_run every program whose peak does not. 0 = unchecked.",
)
flags.DEFINE_boolean(
  "dry_run",
  _D.dry_run,
  "Compile every program of the run on abstract inputs (no data, nothing allocated; absent "
  "devices of --mesh_shape simulated on the CPU), print bytes per device and exit: 0 if it fits "
  "--device_memory_gb, 2 if not.",
)

FLAGS = flags.FLAGS


def _int_list(name: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in FLAGS[name].value)
  except ValueError:
    raise ConfigError(
      f"--{name}={','.join(FLAGS[name].value)}: expected comma-separated integers"
    ) from None


def _rows_per_table(flag: str) -> tuple[tuple[str, int], ...]:
  """--hash_rows / --managed_capacity: N for every table, TABLE:N overrides."""
  pairs = []
  for item in FLAGS[flag].value:
    name, sep, rows = item.rpartition(":")
    if (sep and not name) or not rows.strip().lstrip("-").isdigit():
      raise ConfigError(
        f"--{flag}={item!r}: expected N (every table) or TABLE:N, e.g. 1000000,C3:5000"
      )
    pairs.append((name, int(rows)))
  return tuple(pairs)


def _table_sharding() -> tuple[tuple[str, str], ...]:
  pairs = []
  for item in FLAGS.table_sharding:
    name, sep, plan = item.partition(":")
    if not sep or not name or plan not in PLANS:
      raise ConfigError(
        f"--table_sharding={item!r}: expected TABLE:PLAN with PLAN one of "
        f"{', '.join(PLANS)}, e.g. C3:row"
      )
    pairs.append((name, plan))
  return tuple(pairs)


_INT_LISTS = ("bottom_mlp", "top_mlp", "dcn_deep_mlp", "embedding_mlp", "multi_hot_sizes")
_SPECIAL = _INT_LISTS + ("mesh_shape", "table_sharding", "hash_rows", "managed_capacity")


def config_from_flags() -> Config:
  """The resolved Config of the parsed command line (not yet validated)."""
  values = {
    f.name: FLAGS[f.name].value for f in dataclasses.fields(Config) if f.name not in _SPECIAL
  }
  try:
    mesh_shape = parse_mesh_shape(FLAGS.mesh_shape)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return Config(
    **values,
    **{name: _int_list(name) for name in _INT_LISTS},
    mesh_shape=mesh_shape,
    table_sharding=_table_sharding(),
    hash_rows=_rows_per_table("hash_rows"),
    managed_capacity=_rows_per_table("managed_capacity"),
  )


# Multi-process (not part of Config: they differ between the processes of one run).
flags.DEFINE_string(
  "coordinator_address",
  "",
  "host:port of process 0 for multi-process runs; or JAX_COORDINATOR_ADDRESS.",
)
flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run; 0 = one / from env.")
flags.DEFINE_integer("process_id", -1, "This process's index in a multi-process run.")
