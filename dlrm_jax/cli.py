"""The command line (`dlrm-jax`, `python main.py`): flags -> Config -> a mode, then a summary."""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any

from absl import app, logging

from dlrm_jax import distributed
from dlrm_jax import flags as dlrm_flags
from dlrm_jax.config import Config, ConfigError
from dlrm_jax.faults import CheckpointError, Preempted, TrainingDiverged

FLAGS = dlrm_flags.FLAGS

USAGE = """Train and evaluate DLRM.

  python main.py                                      # built-in data, no download
  python main.py --flagfile=experiments/kaggle.flags  # the reference Criteo Kaggle run
  dlrm-jax --flagfile=experiments/tiny.flags          # the same command, once installed

--flagfile=FILE reads flags from FILE (see experiments/). --helpshort lists the flags
changed most often, --helpfull all of them with their units and defaults.
"""

# The flags a user changes first: listed by --helpshort (absl's "key flags" of the main module).
KEY_FLAGS = (
  "mode",
  "workdir",
  "dataset",
  "data_dir",
  "checkpoint",
  "num_epochs",
  "max_steps",
  "batch_size",
  "learning_rate",
  "optimizer",
  "embedding_dim",
  "bottom_mlp",
  "top_mlp",
  "mesh_shape",
  "sharding",
  "progress",
)


def main(argv: list[str]) -> int:
  """absl's main: runs the mode --mode names; returns the process's exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    # Orbax and JAX log dozens of INFO lines per checkpoint; our own progress
    # is printed (reporting.announce). --verbosity=0 brings INFO logs back.
    logging.set_verbosity(logging.WARNING)
  started = time.perf_counter()
  try:
    config = dlrm_flags.config_from_flags()
    if config.dry_run:
      from dlrm_jax.run.dry_run import dry_run  # sets the CPU device count before JAX starts

      return dry_run(config)
    enable_compilation_cache(config.compilation_cache)
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from dlrm_jax.run.train import train_and_evaluate  # after distributed start-up

    if config.mode != "train":
      return run_mode(config)
    results = train_and_evaluate(config)
  except (ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (CheckpointError, TrainingDiverged) as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  except Preempted as e:
    print(
      f"{e}\n  {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}", file=sys.stderr
    )
    return e.exit_code
  import jax

  if jax.process_index() == 0:
    from dlrm_jax.reporting import plot

    try:
      plot_path = plot.write_curves([config.workdir])
    except Exception as e:  # the run itself succeeded; say why its picture is missing
      print(f"warning: could not write {config.workdir}/curves.png: {e!r}", file=sys.stderr)
      plot_path = None
    print(summary(config, results, time.perf_counter() - started, plot_path))
  return 0


def compilation_cache_dir(setting: str) -> str | None:
  """The directory --compilation_cache names (auto: the user cache directory), None when off."""
  if setting == "off":
    return None
  if setting == "auto":
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "dlrm-jax", "xla")
  return os.path.abspath(os.path.expanduser(setting))


def enable_compilation_cache(setting: str) -> None:
  """Turns on JAX's persistent compilation cache (CPU, GPU and TPU) before anything compiles.

  A rerun of the same model then loads its train, eval and initialiser programs from disk
  instead of compiling them (about 2 s of the Kaggle run on a 2-core CPU). JAX keys each entry
  by the program, its shardings, the devices and the jax/XLA versions, so a stale entry is never
  used. Every program is kept (JAX's default keeps only those that took over 1 s to compile).
  """
  path = compilation_cache_dir(setting)
  import jax

  if path is not None and not _writable_dir(path):
    if setting != "auto":
      raise ConfigError(
        f"--compilation_cache={setting}: cannot create or write {path}; give a writable "
        f"directory, or off"
      )
    # The default must not stop a run (a read-only home): go on without the cache, saying so.
    print(f"warning: cannot write {path}: compiling without a cache", file=sys.stderr)
    path = None
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _writable_dir(path: str) -> bool:
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return False
  return os.access(path, os.W_OK | os.X_OK)


def summary(config: Config, results: dict[str, Any], wall_s: float, plot_path: str | None) -> str:
  """The block a finished run prints: test metrics, time per phase, where its outputs are."""
  test = results["test"]
  line = (
    f"test AUC {test['auc']:.4f}  log loss {test['logloss']:.4f}  "
    f"accuracy {test['accuracy']:.4f}  ({test['num_examples']} examples)"
  )
  best = results.get("best_possible_auc")
  if best and best.get("test"):
    line += f"; best possible AUC {best['test']:.4f} (gap {best['test'] - test['auc']:.4f})"
  timings = results.get("timings")
  if isinstance(timings, dict) and timings:
    phases = ", ".join(f"{k} {_seconds(v)}" for k, v in timings.items() if _is_number(v))
    time_line = f"time: {phases}; {_seconds(wall_s)} in all"
  else:
    time_line = f"time: {_seconds(wall_s)} in all"
  workdir = config.workdir
  lines = [
    "",
    f"finished {results['steps']} steps",
    line,
    time_line,
    f"workdir:     {workdir} (config.json, metrics.jsonl, checkpoints/)",
    f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
  ]
  if plot_path:
    lines.append(f"curves:      {plot_path}")
  return "\n".join(lines)


def _is_number(v: Any) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool)


def _seconds(s: float) -> str:
  return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def run_mode(config: Config) -> int:
  """--mode=eval / predict / export: use a saved model."""
  if config.mode == "eval":
    from dlrm_jax.run.inference import run_eval

    r = run_eval(config)
    print(
      f"{r['split']} AUC {r['auc']:.4f}  log loss {r['logloss']:.4f}  accuracy "
      f"{r['accuracy']:.4f}  ({r['num_examples']} examples) from {r['checkpoint']}"
    )
  elif config.mode == "predict":
    from dlrm_jax.run.inference import run_predict

    r = run_predict(config)
    print(f"predictions for {r['rows']} rows: {r['predictions']} (from {r['checkpoint']})")
  else:
    from dlrm_jax.run.export import run_export

    r = run_export(config)
    print(
      f"exported {r['checkpoint']} to {r['export_dir']} (load it with "
      f"{r['export_dir']}/dlrm_loader.py)"
    )
  return 0


def declare_key_flags() -> None:
  """Makes KEY_FLAGS the main module's key flags, whichever file started the process.

  absl lists under --helpshort the key flags of the module named ``sys.argv[0]``;
  that is main.py, the `dlrm-jax` console script or dlrm_jax/__main__.py.
  """
  for name in KEY_FLAGS:
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def run_in_process(*args: str) -> int:
  """The command line inside this Python process (a notebook): ``run_in_process("--mode=eval")``.

  Flags start from their defaults at every call (earlier calls leave nothing
  behind); returns the exit status instead of exiting.
  """
  FLAGS.unparse_flags()
  FLAGS(["dlrm-jax", *args])
  return main(["dlrm-jax"])


def run() -> None:
  """Entry point of `dlrm-jax`, `python main.py` and `python -m dlrm_jax`."""
  declare_key_flags()
  main_module = sys.modules["__main__"]
  if not getattr(main_module, "__doc__", None):
    main_module.__doc__ = USAGE  # absl prints the main module's docstring as the usage
  app.run(main)
