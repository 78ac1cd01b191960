"""Every script answers --help from the repository root; the package is importable anywhere."""

import os
import subprocess
import sys

import pytest
from scripts_testlib import REPO, help_text, scripts


def test_package_is_installed_from_this_checkout(tmp_path):
  # requirements.txt installs the checkout (`-e .`), so scripts and notebooks outside the
  # repository root import it too; cwd is elsewhere so the root is not on sys.path.
  proc = subprocess.run(
    [sys.executable, "-c", "import dlrm_jax; print(dlrm_jax.__file__)"],
    cwd=tmp_path,
    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0, f"dlrm_jax is not installed: pip install -e {REPO}\n{proc.stderr}"
  assert proc.stdout.strip() == str(REPO / "dlrm_jax" / "__init__.py"), (
    f"dlrm_jax is installed from another checkout: {proc.stdout.strip()}; pip install -e {REPO}"
  )


@pytest.mark.parametrize("script", scripts())
def test_script_answers_help(script):
  help_text(script)


@pytest.mark.parametrize(
  "command", [("main.py",), ("-m", "dlrm_jax"), ("-m", "dlrm_jax.reporting.plot")]
)
def test_entry_points_answer_help(command):
  help_text(*command)


def test_helpshort_lists_the_key_flags():
  out = help_text("main.py")  # absl's --help is the short help
  for flag in ("--flagfile", "--workdir", "--dataset", "--mode", "--batch_size", "--mesh_shape"):
    assert flag in out, flag
  assert "--coordinator_address" not in out  # the full list is --helpfull's
