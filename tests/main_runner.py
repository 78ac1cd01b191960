"""Runs main.py with experiments/tiny.flags in a subprocess, as the end-to-end tests do."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free now, for jax.distributed's coordinator."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def process_flags(port: int, process_id: int, num_processes: int = 2) -> tuple[str, ...]:
  """main.py's flags for process ``process_id`` of a run coordinated on 127.0.0.1:``port``."""
  return (
    f"--coordinator_address=127.0.0.1:{port}",
    f"--num_processes={num_processes}",
    f"--process_id={process_id}",
  )


def sigkill_after_checkpoint(
  procs: list[subprocess.Popen], checkpoint: Path, finish: Callable[[list], list]
) -> None:
  """SIGKILLs every process of a run once ``checkpoint`` (a step's directory) exists.

  ``finish``: the test's own ``procs -> outputs``; a process that ends before the
  checkpoint fails the test with process 0's output.
  """
  start = time.time()
  while not checkpoint.is_dir():
    if any(p.poll() is not None for p in procs):
      raise AssertionError(str(finish(procs)[0])[-3000:])
    assert time.time() - start < 180, "no checkpoint appeared"
    time.sleep(0.02)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  finish(procs)
  assert all(p.returncode == -signal.SIGKILL for p in procs)
