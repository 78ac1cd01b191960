"""The subpackages of dlrm_jax form layers: each imports only from the layers below it.

The order is docs/architecture.md's "Layout" table, read bottom-up. A package at
layer k may import packages of layers < k, and modules of its own package.
"""

from __future__ import annotations

import ast
import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dlrm_jax"

# Bottom-up; a tuple is one layer whose members must not import each other.
LAYERS = [
  ("model", "sharding"),
  ("optim",),
  ("config", "faults"),
  ("data",),
  ("reporting",),
  ("train",),
  ("checkpoint",),
  ("run",),
  ("flags", "distributed"),
  ("cli",),
  ("__main__", "__init__"),
]
RANK = {unit: k for k, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
  """dlrm_jax.train.step -> train; dlrm_jax.config -> config; dlrm_jax -> __init__."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: pathlib.Path) -> set[str]:
  """Every dlrm_jax module ``path`` imports, lazily or not."""
  found: set[str] = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dlrm_jax"):
      if node.module == "dlrm_jax":
        found.update(f"dlrm_jax.{a.name}" for a in node.names)
      else:
        found.add(node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("dlrm_jax"))
  return found


def violations() -> list[str]:
  out = []
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    me = unit_of(".".join(rel.parts))
    for module in sorted(imports_of(path)):
      other = unit_of(module)
      if other == me or other not in RANK:
        continue  # own package; a public name of the top-level API is checked below
      if RANK[other] >= RANK[me]:
        out.append(f"{rel}.py ({me}) imports {module} ({other})")
  return out


def test_every_package_and_top_level_module_has_a_layer():
  units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
  units = {u for u in units if u not in ("__pycache__",) and not u.endswith(".egg-info")}
  assert units == set(RANK), f"give these a layer in LAYERS: {sorted(units ^ set(RANK))}"


def test_no_package_imports_its_own_layer_or_one_above():
  assert violations() == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
  fake = tmp_path / "dlrm_jax"
  (fake / "model").mkdir(parents=True)
  (fake / "model" / "bad.py").write_text("from dlrm_jax.train.step import make_train_step\n")
  monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
  assert violations() == ["dlrm_jax/model/bad.py (model) imports dlrm_jax.train.step (train)"]
