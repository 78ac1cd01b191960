"""The data package reads top-down: parse -> vocabulary -> write format <- read, with no cycles."""

from __future__ import annotations

import ast
import pathlib

DATA = pathlib.Path(__file__).resolve().parents[1] / "dlrm_jax" / "data"
# The on-disk format and the reader may not depend on any writer.
WRITERS = {"preprocess", "terabyte", "streaming", "columns", "synthetic", "tfds_builder"}


def import_graph() -> dict[str, set[str]]:
  """module -> the dlrm_jax.data modules it imports (anywhere in the file, lazy imports too)."""
  graph: dict[str, set[str]] = {}
  for path in sorted(DATA.glob("*.py")):
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        if node.module == "dlrm_jax.data":
          deps.update(alias.name for alias in node.names)
        elif node.module.startswith("dlrm_jax.data."):
          deps.add(node.module.split(".")[2])
      elif isinstance(node, ast.Import):
        deps.update(a.name.split(".")[2] for a in node.names if a.name.startswith("dlrm_jax.data."))
    graph[path.stem] = deps - {path.stem}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m: str) -> list[str] | None:
    state[m] = 1
    stack.append(m)
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 1:
        return stack[stack.index(d) :] + [d]
      if d not in state and (c := visit(d)):
        return c
    stack.pop()
    state[m] = 2
    return None

  for m in sorted(graph):
    if m not in state and (c := visit(m)):
      return c
  return None


def test_data_package_has_no_import_cycle():
  graph = import_graph()
  assert "loader" in graph and "preprocess" in graph
  cycle = find_cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_format_and_reader_depend_on_no_writer():
  graph = import_graph()
  for reader in ("store", "loader"):
    assert not graph[reader] & WRITERS, f"{reader} imports {graph[reader] & WRITERS}"


def test_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
