"""Train and evaluate DLRM: python main.py [--flagfile=experiments/kaggle.flags]."""

import shlex
import sys

from absl import app, logging

from dlrm_jax import distributed
from dlrm_jax import flags as dlrm_flags
from dlrm_jax.config import ConfigError
from dlrm_jax.faults import CheckpointError, Preempted, TrainingDiverged

FLAGS = dlrm_flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    # Orbax and JAX log dozens of INFO lines per checkpoint; our own progress
    # is printed (reporting.announce). --verbosity=0 brings INFO logs back.
    logging.set_verbosity(logging.WARNING)
  try:
    config = dlrm_flags.config_from_flags()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from dlrm_jax.train import train_and_evaluate  # after distributed start-up

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
  test = results["test"]
  line = (
    f"test AUC {test['auc']:.4f}  log loss {test['logloss']:.4f}  "
    f"accuracy {test['accuracy']:.4f}  ({test['num_examples']} examples)"
  )
  best = results.get("best_possible_auc")
  if best and best.get("test"):
    line += f"; best possible AUC {best['test']:.4f} (gap {best['test'] - test['auc']:.4f})"
  print(line)
  print(f"metrics: {config.workdir}/metrics.jsonl")
  return 0


def run_mode(config) -> int:
  """--mode=eval / predict / export: use a saved model."""
  if config.mode == "eval":
    from dlrm_jax.inference import run_eval

    r = run_eval(config)
    print(
      f"{r['split']} AUC {r['auc']:.4f}  log loss {r['logloss']:.4f}  accuracy "
      f"{r['accuracy']:.4f}  ({r['num_examples']} examples) from {r['checkpoint']}"
    )
  elif config.mode == "predict":
    from dlrm_jax.inference import run_predict

    r = run_predict(config)
    print(f"predictions for {r['rows']} rows: {r['predictions']} (from {r['checkpoint']})")
  else:
    from dlrm_jax.export import run_export

    r = run_export(config)
    print(
      f"exported {r['checkpoint']} to {r['export_dir']} (load it with "
      f"{r['export_dir']}/dlrm_loader.py)"
    )
  return 0


if __name__ == "__main__":
  app.run(main)
