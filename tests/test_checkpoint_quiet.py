"""Read-only restores (eval, predict, export) print none of Orbax's read-only notices."""

import logging

from absl import logging as absl_logging

from dlrm_jax.checkpoint import manager


def orbax_lines(caplog):
  return [r.getMessage() for r in caplog.records if "read only" in r.getMessage().lower()]


def test_read_only_store_prints_no_read_only_notice(tmp_path, caplog):
  (tmp_path / manager.CHECKPOINT_DIR).mkdir()
  with caplog.at_level(logging.INFO):
    manager.CheckpointStore(str(tmp_path), read_only=True).close()
  assert orbax_lines(caplog) == []


def test_the_notice_is_orbax_s_own_and_other_warnings_pass(tmp_path, caplog):
  """Without the filter Orbax does warn (so the test above can fail); with it, others still show."""
  import orbax.checkpoint as ocp

  (tmp_path / "c").mkdir()
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  with caplog.at_level(logging.INFO):
    ocp.CheckpointManager(str(tmp_path / "c"), options=options).close()
  assert any(m.startswith("Given directory is read only") for m in orbax_lines(caplog))
  caplog.clear()
  with caplog.at_level(logging.INFO), manager._quiet_read_only_notice(True):
    absl_logging.warning("Given directory is read only=%s", tmp_path)
    absl_logging.warning("something else went wrong")
  assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
  caplog.clear()
  with caplog.at_level(logging.INFO):
    absl_logging.warning("Given directory is read only=%s", tmp_path)  # filter gone afterwards
  assert len(caplog.records) == 1
