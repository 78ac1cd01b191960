"""--compilation_cache: JAX's persistent cache is written by one run and gives a rerun the same
numbers."""

import os
import re

import pytest
from main_runner import run_main

from dlrm_jax.cli import compilation_cache_dir
from dlrm_jax.config import Config, ConfigError


def test_setting_names_the_directory(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache_dir("auto") == os.path.join(str(tmp_path), "dlrm-jax", "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  home = os.path.expanduser("~")
  assert compilation_cache_dir("auto") == os.path.join(home, ".cache", "dlrm-jax", "xla")
  assert compilation_cache_dir("off") is None
  monkeypatch.chdir(tmp_path)
  assert compilation_cache_dir("xla") == os.path.join(str(tmp_path), "xla")


def test_empty_setting_is_refused():
  with pytest.raises(ConfigError, match="--compilation_cache"):
    Config(compilation_cache="").validate()


def _final_metrics(stdout: str) -> str:
  return re.search(r"^test AUC .*$", stdout, re.M).group(0)


def test_rerun_from_the_cache_gives_the_same_numbers(tmp_path):
  cache = tmp_path / "xla"
  first = run_main(tmp_path / "a", tmp_path / "data", f"--compilation_cache={cache}")
  assert first.returncode == 0, first.stderr
  entries = sorted(os.listdir(cache))
  assert entries, "the run wrote nothing to --compilation_cache"
  # A second run in a fresh workdir loads its programs from the cache: nothing new is compiled.
  second = run_main(tmp_path / "b", tmp_path / "data", f"--compilation_cache={cache}")
  assert second.returncode == 0, second.stderr
  assert sorted(os.listdir(cache)) == entries
  assert _final_metrics(second.stdout) == _final_metrics(first.stdout)


def test_off_writes_no_cache(monkeypatch, tmp_path):
  env_cache = tmp_path / "user_cache"
  monkeypatch.setenv("XDG_CACHE_HOME", str(env_cache))  # where auto would write
  result = run_main(tmp_path / "a", tmp_path / "data", "--compilation_cache=off", "--max_steps=2")
  assert result.returncode == 0, result.stderr
  assert not (env_cache / "dlrm-jax").exists()


def test_unwritable_directory_is_refused_naming_the_flag(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_main(tmp_path / "a", tmp_path / "data", f"--compilation_cache={blocker}/xla")
  assert result.returncode == 2
  assert "--compilation_cache=" in result.stderr and "Traceback" not in result.stderr


def test_unwritable_default_warns_and_runs(monkeypatch, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # auto's directory cannot be made
  result = run_main(tmp_path / "a", tmp_path / "data", "--max_steps=2")
  assert result.returncode == 0, result.stderr
  assert f"warning: cannot write {blocker}/dlrm-jax/xla" in result.stderr
