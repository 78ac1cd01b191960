"""The commands in README.md and docs/*.md name scripts, flags and files that exist.

Every `python ...` / `dlrm-jax ...` command is parsed: its script or module must exist,
every --flag must be one that script defines (with a value its parser accepts, for
main.py), and every --flagfile must exist and hold only defined flags. Commands that
only print help (--help, --helpshort, --helpfull) are run.
"""

from __future__ import annotations

import re
import shlex

import pytest
from scripts_testlib import REPO, help_text

from dlrm_jax import flags as dlrm_flags

DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
HELP = ("--help", "--helpshort", "--helpfull")


def commands(doc: str) -> list[str]:
  """`python ...` and `dlrm-jax ...` commands: inline code spans and fenced code lines."""
  text = (REPO / doc).read_text()
  found = []
  for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #")[0].strip()
      if line.startswith(("python ", "dlrm-jax")):
        found.append(line)
  outside = re.sub(r"```.*?```", "", text, flags=re.S)
  for span in re.findall(r"`([^`]+)`", outside):
    span = " ".join(span.split())
    if span.startswith(("python ", "dlrm-jax")):
      found.append(span)
  return found


ALL = sorted({(doc, c) for doc in DOCS for c in commands(doc)})


def test_docs_have_commands():
  assert any(c == "python main.py" for _, c in ALL)
  assert any("benchmarks/train_throughput.py" in c for _, c in ALL)


def check_main_flags(args: list[str], where: str) -> None:
  flags = dlrm_flags.FLAGS
  for arg in args:
    if arg in HELP:
      continue
    assert arg.startswith("--"), f"{where}: unexpected argument {arg!r}"
    name, _, value = arg[2:].partition("=")
    if name == "flagfile":
      path = REPO / value
      assert path.is_file(), f"{where}: no flagfile {value}"
      lines = [x.strip() for x in path.read_text().splitlines()]
      check_main_flags([x for x in lines if x and not x.startswith("#")], f"{where} ({value})")
      continue
    if name not in flags and name.startswith("no") and name[2:] in flags:
      name, value = name[2:], "false"
    assert name in flags, f"{where}: main.py has no flag --{name}"
    if value:
      flags[name].parser.parse(value)  # raises on a value the flag refuses


@pytest.mark.parametrize("doc,command", ALL)
def test_command_is_valid(doc, command):
  where = f"{doc}: `{command}`"
  tokens = shlex.split(command)
  if tokens[0] == "dlrm-jax":
    tokens = ["python", "main.py", *tokens[1:]]
  assert tokens[0] == "python", where
  if tokens[1:3] == ["-m", "pytest"]:
    for t in tokens[3:]:
      assert t.startswith("-") or t == "sharding" or (REPO / t).exists(), f"{where}: {t}"
    return
  if tokens[1:3] == ["-m", "dlrm_jax"] or tokens[1] == "main.py":
    args = tokens[3:] if tokens[1] == "-m" else tokens[2:]
    check_main_flags(args, where)
    script = ("main.py",)
  elif tokens[1] == "-m":
    script, args = tuple(tokens[1:3]), tokens[3:]
  else:
    assert (REPO / tokens[1]).is_file(), f"{where}: no script {tokens[1]}"
    script, args = (tokens[1],), tokens[2:]
  if script != ("main.py",):
    usage = help_text(*script)
    for arg in args:
      if arg.startswith("--") and arg not in HELP:
        name = arg.split("=")[0]
        assert name in usage, f"{where}: {script[-1]} has no option {name}"
  if any(a in HELP for a in args):
    help_text(*script)  # the cheap commands, run as written (help_text checks the output)
