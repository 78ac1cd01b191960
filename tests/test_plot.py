"""curves.png: what dlrm_jax.reporting.plot reads from metrics.jsonl, and that it writes a PNG."""

import json

import pytest

from dlrm_jax.reporting import plot


def write_metrics(workdir, records):
  workdir.mkdir(parents=True)
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


RECORDS = [
  {"step": 10, "loss": 0.6, "samples_per_sec": 100.0},
  {"step": 20, "loss": 0.5, "samples_per_sec": 100.0},
  {"step": 20, "split": "validation", "auc": 0.7, "logloss": 0.5, "best_possible_auc": 0.8},
  {"step": 30, "loss": None, "samples_per_sec": 100.0},
  {"step": 40, "loss": 0.4, "samples_per_sec": 100.0},
  {"step": 40, "split": "validation", "auc": 0.75, "logloss": 0.45, "best_possible_auc": 0.8},
  {"step": 40, "split": "test", "auc": 0.74, "logloss": 0.46, "best_possible_auc": 0.79},
]


def test_reads_training_loss_and_validation_auc(tmp_path):
  write_metrics(tmp_path / "run", RECORDS)
  c = plot.read_curves(str(tmp_path / "run"))
  assert (c.name, c.train_steps, c.train_loss) == ("run", [10, 20, 40], [0.6, 0.5, 0.4])
  assert (c.val_steps, c.val_auc, c.best_possible_auc) == ([20, 40], [0.7, 0.75], 0.8)


def test_command_line_plots_several_runs(tmp_path, capsys):
  write_metrics(tmp_path / "a", RECORDS)
  write_metrics(tmp_path / "b", [r for r in RECORDS if "best_possible_auc" not in r])
  out = tmp_path / "both.png"
  assert plot.main([str(tmp_path / "a"), str(tmp_path / "b"), f"--out={out}"]) == 0
  assert capsys.readouterr().out.strip() == str(out)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert plot.write_curves([str(tmp_path / "a")]) == str(tmp_path / "a" / "curves.png")
  assert (tmp_path / "a" / "curves.png").stat().st_size > 10_000


def test_missing_or_broken_metrics_are_named(tmp_path, capsys):
  assert plot.main([str(tmp_path / "nowhere")]) == 2
  assert "nowhere/metrics.jsonl does not exist" in capsys.readouterr().err
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo\n')
  with pytest.raises(ValueError, match="bad/metrics.jsonl:2"):
    plot.read_curves(str(tmp_path / "bad"))


def texts(ax):
  return " ".join(t.get_text() for t in ax.texts)


def test_few_points_get_markers_and_a_note_when_there_is_no_curve(tmp_path):
  """A short run (one logged loss, one validation point) still shows its points, and says why."""
  write_metrics(tmp_path / "short", [RECORDS[1], RECORDS[2]])
  write_metrics(tmp_path / "ok", RECORDS)
  runs = [plot.read_curves(str(tmp_path / d)) for d in ("short", "ok")]
  loss_ax, auc_ax = plot.figure(runs).axes
  for ax in (loss_ax, auc_ax):
    short, ok = (line for line in ax.get_lines() if line.get_linestyle() != "--")
    assert short.get_marker() == "o" and ok.get_marker() == "o"  # 1 and 2-3 points: markers
    assert "run too short to have a curve" in texts(ax) and "short: 1 point(s)" in texts(ax)
    assert "ok:" not in texts(ax)


def test_long_runs_have_plain_lines_and_no_note(tmp_path):
  n = plot.MARKERS_BELOW
  write_metrics(tmp_path / "long", [{"step": s, "loss": 1.0 / s} for s in range(1, n + 1)])
  loss_ax, auc_ax = plot.figure([plot.read_curves(str(tmp_path / "long"))]).axes
  (line,) = loss_ax.get_lines()
  assert line.get_marker() in ("None", "", None) and len(line.get_xdata()) == n
  assert texts(loss_ax) == ""
  assert "long: 0 point(s)" in texts(auc_ax)  # no validation at all
