"""The `--out` contract (catts_jax.runs): the run lock, strict atomic JSON and JSONL, JSONL append/read/trim after a
kill, the run.json settings check, README blocks."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from catts_jax import runs

ROOT = pathlib.Path(__file__).parents[1]


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


def test_locked_names_the_holder_and_lets_go(tmp_path):
  out = tmp_path / "runs" / "x"
  with runs.locked(out) as held:  # creates the directory
    assert held == out and (out / ".lock").read_text() == f"{os.getpid()}\n"
    with runs.locked(out):  # re-entrant in one process (an entry point, then its library)
      pass
    code = "import sys\nfrom catts_jax import runs\ntry:\n  with runs.locked(sys.argv[1]): pass\nexcept runs.OutDirError as e:\n  print(e)"
    other = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True)
    assert other.stdout.strip() == (
      f"{out} is in use by another run (pid {os.getpid()}); wait for it or choose another --out"
    )
  with pytest.raises(RuntimeError), runs.locked(out):  # let go however the block ends ...
    raise RuntimeError("a failed run")
  assert (
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True).stdout
    == ""
  )
  (tmp_path / "file").write_text("")
  with (
    pytest.raises(runs.OutDirError, match="cannot create .*file/out"),
    runs.locked(tmp_path / "file" / "out"),
  ):
    pass


def test_replacing_keeps_the_old_file_on_failure(tmp_path):
  path = runs.write_lines(tmp_path / "graded.jsonl", [{"id": "a"}, {"id": "é"}])
  assert path.read_text(encoding="utf-8") == '{"id": "a"}\n{"id": "é"}\n'
  with pytest.raises(TypeError):
    runs.write_lines(path, [{"id": "b"}, {"id": object()}])  # fails after the first row
  assert path.read_text(encoding="utf-8") == '{"id": "a"}\n{"id": "é"}\n'
  with pytest.raises(OSError), runs.replacing(tmp_path / "plot.png") as tmp:
    assert tmp.suffix == ".png" and tmp.parent == tmp_path
    tmp.write_bytes(b"half")
    raise OSError("killed")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["graded.jsonl"]  # no temporary file left


def test_an_edited_results_file_is_named_not_a_keyerror(tmp_path):
  """A `{}` or non-object line in the middle of results.jsonl: one line naming the file and line
  (a cut-off last line is still skipped); a damaged run.json likewise."""
  path = tmp_path / "results.jsonl"
  path.write_text('{"id": "a"}\n{}\n{"id": "b"}\n{"id": "c", "x": [1,')
  assert [r["id"] for r in runs.read_rows(path)[:1]] == ["a"]  # no key required: rows as they are
  with pytest.raises(ValueError, match=r"results\.jsonl: line 2 is a row without 'id'"):
    runs.read_rows(path, required="id")
  path.write_text('{"id": "a"}\n[1, 2]\n')
  with pytest.raises(ValueError, match="line 2 is not a JSON object"):
    runs.read_rows(path, required="id")
  path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "x": [1,')
  assert [r["id"] for r in runs.read_rows(path, required="id")] == ["a", "b"]
  (tmp_path / "run.json").write_text('{"ns": [1, 2], "meth')
  with pytest.raises(ValueError, match=r"run\.json is damaged \(Unterminated string"):
    runs.check_settings(tmp_path, {"ns": [1, 2]}, ["ns"])
