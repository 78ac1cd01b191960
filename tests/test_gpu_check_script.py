"""benchmarks/gpu_check.sh parses and refuses unknown arguments (its --small run is manual:
about 10 minutes on 2 cores; docs/performance.md)."""

import subprocess

from main_runner import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses_and_refuses_unknown_arguments():
  assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
  r = subprocess.run(["bash", str(SCRIPT), "--big"], capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "usage: bash benchmarks/gpu_check.sh [--small]" in r.stderr
