"""The `--out` contract (catts_jax.runs): strict atomic JSON, JSONL append/read/trim after a
kill, the run.json settings check, README blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catts_jax import runs


def test_json_is_strict(tmp_path):
  path = runs.write_json(
    tmp_path / "r" / "report.json", {"ece": float("nan"), "n": np.int64(3), "v": [np.float32(0.5)]}
  )
  assert json.loads(path.read_text()) == {"ece": None, "n": 3, "v": [0.5]}


def test_write_json_keeps_the_old_file_when_serialisation_fails(tmp_path):
  path = runs.write_json(tmp_path / "report.json", {"accuracy": 0.5})
  with pytest.raises(TypeError):
    runs.write_json(path, {"accuracy": object()})
  assert json.loads(path.read_text()) == {"accuracy": 0.5}
  assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_rows_append_and_read_back_after_a_kill(tmp_path):
  path = tmp_path / "out" / "results.jsonl"
  assert runs.read_rows(path) == []
  runs.trim_partial_line(path)  # nothing to trim: no file
  with runs.appending(path) as write:
    write({"id": "a", "text": "é"})
    write({"id": "b"})
    assert runs.read_rows(path) == [{"id": "a", "text": "é"}, {"id": "b"}]  # flushed as written
  with path.open("a") as f:
    f.write('{"id": "c", "cut o')  # a kill in the middle of a line
  assert [r["id"] for r in runs.read_rows(path)] == ["a", "b"]  # the cut line is skipped
  with runs.appending(path) as write:  # ... and trimmed before new rows
    write({"id": "c"})
  assert path.read_text().splitlines() == ['{"id": "a", "text": "é"}', '{"id": "b"}', '{"id": "c"}']

  runs.trim_partial_line(path)
  assert path.read_text().count("\n") == 3  # a whole last line is kept
  path.write_text('{"id": "a"}\n{"id"')
  runs.trim_partial_line(path)
  assert path.read_text() == '{"id": "a"}\n'


def test_settings_check_refuses_a_mixed_run(tmp_path):
  settings = {"checkpoint": "c", "ns": [1, 2], "config": {"tau": 0.5}, "limit": 4}
  keys = ("checkpoint", "ns", "config")
  runs.check_settings(tmp_path / "out", settings, keys)  # the first run writes run.json
  assert json.loads((tmp_path / "out" / "run.json").read_text()) == settings
  runs.check_settings(tmp_path / "out", {**settings, "limit": 8}, keys)  # not a setting the rows depend on
  with pytest.raises(ValueError, match="holds a run with other ns, config; use another --out"):
    runs.check_settings(tmp_path / "out", {**settings, "ns": [1, 4], "config": {"tau": 0.3}}, keys)
  assert json.loads((tmp_path / "out" / "run.json").read_text()) == settings  # left as it was


def test_readme_blocks(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("a\n<!-- t:start -->\nSTALE\n<!-- t:end -->\nb\n")
  runs.replace_block(readme, "t", "| x |")
  assert readme.read_text() == "a\n<!-- t:start -->\n| x |\n<!-- t:end -->\nb\n"
  runs.render_block(readme, "t", "runs/demo/report.json", "| y |")
  assert readme.read_text() == "a\n<!-- t:start -->\n`runs/demo/report.json`\n\n| y |\n<!-- t:end -->\nb\n"
  with pytest.raises(ValueError, match="no <!-- other:start --> ... <!-- other:end --> block"):
    runs.replace_block(readme, "other", "text")
