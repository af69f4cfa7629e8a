"""Grading a predictions file against a benchmark split, row by row.

Input rows are JSON lines `{"id": ..., "response": ...[, "confidence": p]}`; several rows may
share an id (N samples). Bad input never stops the run: an unknown id, a line that is not JSON
or lacks a field, or a confidence outside [0, 1] is recorded on that row in `error` (row not
graded) or `warning` (graded, confidence ignored), naming the line and id.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from catts_jax import runs
from catts_jax.eval import answers, metrics, report

GROUP_KEYS = ("subject", "level", "category", "question_type")


def read_rows(path: str | pathlib.Path) -> Iterator[dict[str, Any]]:
  """{"line", "row"} or {"line", "error"} per non-empty line."""
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        yield {"line": lineno, "error": f"line {lineno}: not JSON ({e.msg})"}
        continue
      if not isinstance(row, dict):
        yield {"line": lineno, "error": f"line {lineno}: expected a JSON object, got {type(row).__name__}"}
        continue
      yield {"line": lineno, "row": row}


def _confidence(value: Any) -> tuple[float | None, str | None]:
  if value is None:
    return None, None
  try:
    p = float(value)
  except (TypeError, ValueError):
    return None, f"confidence {value!r} is not a number; ignored"
  if not math.isfinite(p) or not 0.0 <= p <= 1.0:
    return None, f"confidence {value!r} is outside [0, 1]; ignored"
  return p, None


def grade_row(
  benchmark: str, item: Mapping[str, Any], examples: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
  """One graded output row: id, correct, extracted, answer, confidence, groups, error/warning."""
  line = item["line"]
  if "error" in item:
    return {"line": line, "id": None, "correct": None, "error": item["error"]}
  row = item["row"]
  rid = row.get("id")
  out: dict[str, Any] = {"line": line, "id": None if rid is None else str(rid), "correct": None}
  if rid is None:
    out["error"] = f"line {line}: no 'id' field"
    return out
  example = examples.get(str(rid))
  if example is None:
    out["error"] = f"line {line}: id {rid!r} is not in {benchmark}"
    return out
  response = row.get("response")
  if not isinstance(response, str):
    out["error"] = f"line {line} (id {rid}): 'response' must be a string, got {type(response).__name__}"
    return out
  correct, extracted = answers.grade(benchmark, response, example)
  confidence, warning = _confidence(row.get("confidence"))
  out.update(correct=bool(correct), extracted=extracted, answer=example["answer"], confidence=confidence)
  out.update({k: example.get(k, "") for k in GROUP_KEYS})
  if warning:
    out["warning"] = f"line {line} (id {rid}): {warning}"
  return out


def summarize(
  graded: Sequence[Mapping[str, Any]], benchmark: str, split: str, problems: Sequence[str], n_bins: int = 15
) -> dict[str, Any]:
  ok = [r for r in graded if r.get("correct") is not None]
  answered = {r["id"] for r in ok}
  out: dict[str, Any] = {
    "benchmark": benchmark,
    "split": split,
    "rows": len(graded),
    "graded": len(ok),
    "errors": len(graded) - len(ok),
    "problems": len(problems),
    "problems_answered": len(answered),
    "problems_missing": len(set(problems) - answered),
    "accuracy": metrics.accuracy([r["correct"] for r in ok]),
    "by": {k: metrics.accuracy_by(ok, k) for k in GROUP_KEYS},
  }
  conf = [(r["confidence"], r["correct"]) for r in ok if r.get("confidence") is not None]
  if conf:
    c, y = zip(*conf)
    out["calibration"] = {"rows_with_confidence": len(conf), **metrics.calibration_summary(c, y, n_bins)}
    out["reliability"] = metrics.reliability_bins(c, y, n_bins)
  out["error_messages"] = [r["error"] for r in graded if r.get("error")][:20]
  out["warnings"] = [r["warning"] for r in graded if r.get("warning")][:20]
  return out


def evaluate_file(
  benchmark: str,
  dataset: Sequence[Mapping[str, Any]],
  predictions: str | pathlib.Path,
  out_dir: str | pathlib.Path,
) -> dict[str, Any]:
  """Grade `predictions` against `dataset`, streaming graded.jsonl; write report.json,
  report.md and (with confidences) reliability.png into out_dir. Returns the report."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  examples = {ex["id"]: ex for ex in dataset}
  graded = []
  with open(out_dir / "graded.jsonl", "w", encoding="utf-8") as f:
    for item in read_rows(predictions):
      row = grade_row(benchmark, item, examples)
      graded.append(row)
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  split = getattr(dataset, "split", "")
  summary = summarize(graded, benchmark, split, list(examples))
  summary["predictions"] = str(predictions)
  runs.write_json(out_dir / "report.json", summary)
  runs.write_text(out_dir / "report.md", report.markdown_report(summary, f"{benchmark} {split}"))
  conf = [
    (r["confidence"], r["correct"])
    for r in graded
    if r.get("correct") is not None and r.get("confidence") is not None
  ]
  if conf:
    c, y = zip(*conf)
    report.plot_reliability(c, y, out_dir / "reliability.png", title=f"{benchmark} {split}")
  return summary


def human_summary(summary: Mapping[str, Any]) -> str:
  keys = ("benchmark", "split", "rows", "graded", "errors", "problems", "problems_answered", "accuracy")
  rows = [{"metric": k, "value": summary[k]} for k in keys if k in summary]
  rows += [{"metric": k, "value": v} for k, v in (summary.get("calibration") or {}).items()]
  parts = [report.text_table(rows, ["metric", "value"])]
  subjects = summary.get("by", {}).get("subject") or {}
  if subjects:
    parts.append(report.text_table(report.group_rows(subjects, "subject")))
  return "\n\n".join(parts)
