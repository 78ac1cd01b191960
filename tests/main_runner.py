"""Runs main.py with experiments/tiny.flags in a subprocess, as the end-to-end tests do."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main_command(work, data, *args) -> list[str]:
  """The command line of a tiny run writing to ``work`` with datasets under ``data``."""
  return [
    sys.executable,
    str(REPO / "main.py"),
    f"--flagfile={REPO}/experiments/tiny.flags",
    f"--workdir={work}",
    f"--data_dir={data}",
    "--noprogress",
    *args,
  ]


def main_env(devices: int = 1) -> dict[str, str]:
  """The environment for ``devices`` fake CPU devices (conftest's 8 are for in-process tests)."""
  return dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
  )


def run_main(work, data, *args, devices: int = 1, timeout: float = 240):
  """Runs a tiny main.py to completion; returns the CompletedProcess (output as text)."""
  return subprocess.run(
    main_command(work, data, *args),
    cwd=REPO,
    env=main_env(devices),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def start_main(work, data, *args, devices: int = 1) -> subprocess.Popen:
  """Starts a tiny main.py in the background (stdout and stderr piped, as text)."""
  return subprocess.Popen(
    main_command(work, data, *args),
    cwd=REPO,
    env=main_env(devices),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
