"""The public API (dlrm_jax/__init__.py): every name resolves, is documented, and loads lazily."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dlrm_jax

REPO = Path(__file__).resolve().parents[1]


def test_every_exported_name_resolves_where_the_table_says():
  for name in dlrm_jax.__all__:
    value = getattr(dlrm_jax, name)
    if inspect.isclass(value) or inspect.isfunction(value):
      # Defined there, not re-exported: the table names each name's home.
      assert value.__module__ == dlrm_jax._EXPORTS[name], name


def test_every_exported_name_has_its_line_in_docs_api_md():
  documented = re.findall(r"^- `([A-Za-z_]\w*)`", (REPO / "docs" / "api.md").read_text(), re.M)
  assert sorted(documented) == dlrm_jax.__all__
  assert len(documented) == len(set(documented))


def test_dir_lists_the_api_and_unknown_names_raise():
  assert set(dlrm_jax.__all__) <= set(dir(dlrm_jax))
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    dlrm_jax.nope  # noqa: B018


def modules_after(statement: str) -> set[str]:
  code = f"{statement}; import sys; print(' '.join(sorted(sys.modules)))"
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
  )
  return set(out.stdout.split())


def test_importing_the_package_or_the_parser_loads_no_jax_or_flax():
  for statement in ("import dlrm_jax", "import dlrm_jax.data.tsv_parser"):
    loaded = modules_after(statement)
    assert "dlrm_jax" in loaded
    assert not {"flax", "jax", "orbax"} & loaded, statement
  assert "flax" in modules_after("from dlrm_jax import DenseModel")  # the check can fail
