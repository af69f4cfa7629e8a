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
    {"id": "5", "response": None},
    {"id": 5, "response": "No"},
  ])  # fmt: skip
  out = tmp_path / "out"
  argv = ["--benchmark", "mathvista", "--data", str(mathvista_release), "--data_dir", str(tmp_path / "tfds")]
  # Two samples of problem 1 and two rows of 5: graded row by row with --dedupe all.
  assert evaluate.main([*argv, "--predictions", str(preds), "--out", str(out), "--dedupe", "all"]) == 0

  rows = [json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()]
  assert len(rows) == 8
  assert [r["correct"] for r in rows] == [True, False, True, True, False, None, None, True]
  assert [r.get("extracted") for r in rows[:5]] == ["C", "A", "4", "1.24", "[2, 4]"]
  assert rows[5]["error"] == "line 6: id '99' is not in mathvista"
  assert "line 7 (id 5): 'response' must be a string" in rows[6]["error"]

  report = json.loads((out / "report.json").read_text())
  assert (report["rows"], report["graded"], report["errors"]) == (8, 6, 2)
  assert report["accuracy"] == pytest.approx(4 / 6)
  assert report["problems"] == 5 and report["problems_answered"] == 5 and report["problems_missing"] == 0
  assert report["coverage"] == 1.0
  assert report["headline"] == "accuracy 0.667 on 5 of 5 problems (coverage 100.0%), 6 graded rows"
  assert report["calibration"]["rows_with_confidence"] == 5
  assert report["calibration"]["auroc"] == pytest.approx(1.0)
  assert report["by"]["subject"]["math word problem"] == {"accuracy": 1.0, "correct": 1, "total": 1}
  assert (out / "reliability.png").stat().st_size > 0 and "accuracy by subject" in (
    out / "report.md"
  ).read_text()
  printed = capsys.readouterr()
  assert "accuracy" in printed.out and "0.6667" in printed.out
  assert "accuracy 0.667 on 5 of 5 problems (coverage 100.0%)" in printed.out
  assert "bad row: line 6: id '99' is not in mathvista" in printed.err
  assert sorted(p.name for p in out.iterdir()) == [
    ".lock",
    "graded.jsonl",
    "reliability.png",
    "report.json",
    "report.md",
  ]


def test_duplicates_coverage_and_a_stale_plot(tmp_path, mathvista_release, capsys):
  preds = write_lines(tmp_path / "preds.jsonl", [
    {"id": "1", "response": "\\boxed{A}", "confidence": 0.2},
    {"id": "2", "response": "There are 4 objects left."},
    {"id": "1", "response": "The answer is (C) 145°"},
  ])  # fmt: skip
  out = tmp_path / "out"
  base = ["--benchmark", "mathvista", "--data", str(mathvista_release), "--data_dir", str(tmp_path / "tfds")]
  base += ["--predictions", str(preds), "--out", str(out)]
  assert evaluate.main(base) == 2  # a duplicate id is an error by default ...
  assert "line 3: duplicate id '1' (first on line 1)" in capsys.readouterr().err
  assert not (out / "report.json").exists()
  assert evaluate.main([*base, "--dedupe", "first"]) == 0  # ... or one row of it is kept
  graded = [json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()]
  assert [(r["line"], r["correct"]) for r in graded] == [(1, False), (2, True)]
  assert "accuracy 0.500 on 2 of 5 problems (coverage 40.0%)" in capsys.readouterr().out
  assert (out / "reliability.png").is_file()
  assert evaluate.main([*base, "--dedupe", "last"]) == 0
  graded = [json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()]
  assert [(r["line"], r["correct"]) for r in graded] == [(2, True), (3, True)]
  report = json.loads((out / "report.json").read_text())
  assert report["headline"] == "accuracy 1.000 on 2 of 5 problems (coverage 40.0%)"
  assert not (out / "reliability.png").exists()  # no confidences left: the earlier plot goes


def test_evaluate_reports_bad_arguments(tmp_path, mathvista_release, capsys):
  base = ["--benchmark", "mathvista", "--out", str(tmp_path / "o"), "--data_dir", str(tmp_path / "tfds")]
  assert (
    evaluate.main([*base, "--data", str(mathvista_release), "--predictions", str(tmp_path / "none.jsonl")])
    == 2
  )
  preds = write_lines(tmp_path / "p.jsonl", [{"id": "1", "response": "A"}])
  assert evaluate.main([*base, "--data", str(tmp_path / "nowhere"), "--predictions", str(preds)]) == 2
  assert "does not exist" in capsys.readouterr().err
