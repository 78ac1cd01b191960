"""Runs the repository's scripts as a user would: from the repository root, in a subprocess."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Every script a user runs by path; new ones are found by the glob.
SCRIPT_GLOBS = ("benchmarks/*.py", "experiments/*.py")


def scripts() -> list[str]:
  """Every benchmark and experiment script (a file with a ``__main__`` block; not its helpers)."""
  paths = (p for g in SCRIPT_GLOBS for p in REPO.glob(g))
  return sorted(str(p.relative_to(REPO)) for p in paths if "__main__" in p.read_text())


def run_in_repo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
  """``python ARGS`` from the repository root, as a user types it (no PYTHONPATH of ours)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # conftest's 8 fake devices are for in-process tests
  return subprocess.run(
    [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )


@functools.cache
def help_text(*command: str) -> str:
  """The --help output of ``python COMMAND``; fails on a crash (e.g. a broken import).

  argparse exits 0 after --help, absl 1; a traceback means the script itself failed.
  """
  proc = run_in_repo(*command, "--help")
  out = proc.stdout + proc.stderr
  assert proc.returncode in (0, 1) and "Traceback" not in out, (
    f"python {' '.join(command)} --help failed (exit {proc.returncode}):\n{out[-3000:]}"
  )
  assert "usage:" in out or "--helpfull" in out, out[-3000:]
  return out
