"""`python -m dlrm_jax`: the same as `dlrm-jax` and `python main.py`."""

from dlrm_jax.cli import run

if __name__ == "__main__":
  run()
