"""Train and evaluate DLRM: python main.py [--flagfile=experiments/kaggle.flags]."""

import sys

from absl import app, logging

from dlrm_jax import distributed
from dlrm_jax import flags as dlrm_flags
from dlrm_jax.config import ConfigError

FLAGS = dlrm_flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    config = dlrm_flags.config_from_flags()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from dlrm_jax.train import train_and_evaluate  # after distributed start-up

    results = train_and_evaluate(config)
  except (ConfigError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    return 2
  test = results["test"]
  line = (f"test AUC {test['auc']:.4f}  log loss {test['logloss']:.4f}  "
          f"accuracy {test['accuracy']:.4f}  ({test['num_examples']} examples)")
  best = results.get("best_possible_auc")
  if best and best.get("test"):
    line += f"; best possible AUC {best['test']:.4f} (gap {best['test'] - test['auc']:.4f})"
  print(line)
  print(f"metrics: {config.workdir}/metrics.jsonl")
  return 0


if __name__ == "__main__":
  app.run(main)
