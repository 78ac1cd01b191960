"""Train and evaluate DLRM: python main.py [--flagfile=experiments/kaggle.flags].

The same as the `dlrm-jax` command; `--helpshort` lists the flags changed most often,
`--helpfull` every flag with its unit and default. The code is in dlrm_jax/cli.py.
"""

from dlrm_jax.cli import run

if __name__ == "__main__":
  run()
