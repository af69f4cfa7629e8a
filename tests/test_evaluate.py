"""python -m infer.evaluate end to end, bad rows included."""

from __future__ import annotations

import json

import pytest
from fixtures import releases

from infer import evaluate


@pytest.fixture(scope="module")
def mathvista_release(tmp_path_factory):
  return releases.write_mathvista_parquet(tmp_path_factory.mktemp("mathvista"))


def write_lines(path, lines):
  path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
  return path


def test_evaluate_writes_rows_report_and_plot(tmp_path, mathvista_release, capsys):
  preds = write_lines(tmp_path / "preds.jsonl", [
    {"id": "1", "response": "The answer is (C) 145°", "confidence": 0.9},
    {"id": "1", "response": "\\boxed{A}", "confidence": 0.6},
    {"id": "2", "response": "There are 4 objects left.", "confidence": 0.8},
    {"id": "3", "response": "d = 1.24 m", "confidence": 0.7},
    {"id": "4", "response": "[2, 4]", "confidence": 0.3},
    {"id": "99", "response": "\\boxed{1}"},
    "{not json",
    {"response": "no id"},
    {"id": "5", "response": None},
    {"id": "5", "response": "No", "confidence": "sure"},
  ])  # fmt: skip
  out = tmp_path / "out"
  argv = ["--benchmark", "mathvista", "--data", str(mathvista_release), "--data_dir", str(tmp_path / "tfds")]
  assert evaluate.main([*argv, "--predictions", str(preds), "--out", str(out)]) == 0

  rows = [json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()]
  assert len(rows) == 10
  assert [r["correct"] for r in rows] == [True, False, True, True, False, None, None, None, None, True]
  assert [r.get("extracted") for r in rows[:5]] == ["C", "A", "4", "1.24", "[2, 4]"]
  assert rows[5]["error"] == "line 6: id '99' is not in mathvista"
  assert rows[6]["error"].startswith("line 7: not JSON")
  assert rows[7]["error"] == "line 8: no 'id' field"
  assert "line 9 (id 5): 'response' must be a string" in rows[8]["error"]
  assert rows[9]["warning"] == "line 10 (id 5): confidence 'sure' is not a number; ignored"

  report = json.loads((out / "report.json").read_text())
  assert (report["rows"], report["graded"], report["errors"]) == (10, 6, 4)
  assert report["accuracy"] == pytest.approx(4 / 6)
  assert report["problems"] == 5 and report["problems_answered"] == 5 and report["problems_missing"] == 0
  assert report["calibration"]["rows_with_confidence"] == 5
  assert report["calibration"]["auroc"] == pytest.approx(1.0)
  assert report["by"]["subject"]["math word problem"] == {"accuracy": 1.0, "correct": 1, "total": 1}
  assert (out / "reliability.png").stat().st_size > 0 and "accuracy by subject" in (
    out / "report.md"
  ).read_text()
  printed = capsys.readouterr()
  assert "accuracy" in printed.out and "0.6667" in printed.out
  assert "bad row: line 6: id '99' is not in mathvista" in printed.err


def test_evaluate_reports_bad_arguments(tmp_path, mathvista_release, capsys):
  base = ["--benchmark", "mathvista", "--out", str(tmp_path / "o"), "--data_dir", str(tmp_path / "tfds")]
  assert (
    evaluate.main([*base, "--data", str(mathvista_release), "--predictions", str(tmp_path / "none.jsonl")])
    == 2
  )
  preds = write_lines(tmp_path / "p.jsonl", [{"id": "1", "response": "A"}])
  assert evaluate.main([*base, "--data", str(tmp_path / "nowhere"), "--predictions", str(preds)]) == 2
  assert "does not exist" in capsys.readouterr().err
