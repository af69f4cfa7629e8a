"""Grading a predictions file against a benchmark split, row by row.

Input rows are JSON lines `{"id": ..., "response": ...[, "confidence": p]}`. The whole file is
read and checked before anything is graded or written (`read_predictions`); a file that breaks
the format stops the run with one `PredictionsError` line naming the file, the line and, where
there is one, the id: a byte that is not UTF-8, a line that is not a JSON object, a row without
an id (`{}`), a confidence that is not a number in [0, 1] (true, "x", NaN, 1.5), or an id seen
twice (unless `dedupe` says which row to keep, or "all": N samples per problem). Rows that are
well formed but cannot be graded (an id the benchmark lacks, a response that is not a string)
are recorded on that row in `error` and counted; the headline says on how many of the split's
problems the accuracy stands (coverage).
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from catts_jax import runs
from catts_jax.eval import answers, metrics, report

GROUP_KEYS = ("subject", "level", "category", "question_type")
DEDUPE = ("error", "first", "last", "all")


class PredictionsError(ValueError):
  """A predictions file that breaks the format; one line naming the file and line."""


def _confidence(value: Any) -> float | None:
  """The confidence of a row, or None when absent; raises ValueError when not in [0, 1]."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int | float):
    raise ValueError(f"confidence {value!r} is not a number")
  if not math.isfinite(value) or not 0.0 <= value <= 1.0:
    raise ValueError(f"confidence {value!r} is outside [0, 1]")
  return float(value)


def read_predictions(path: str | pathlib.Path, dedupe: str = "error") -> list[dict[str, Any]]:
  """Every row of a predictions file as {"line", "id", "row", "confidence"}, checked whole
  before the caller writes anything. `dedupe`: what an id seen twice does: "error" (a
  PredictionsError naming it), "first" or "last" (keep that row), "all" (keep every row: N
  samples per problem)."""
  if dedupe not in DEDUPE:
    raise ValueError(f"dedupe must be one of {DEDUPE}, got {dedupe!r}")
  items: dict[Any, dict[str, Any]] = {}  # id (or line for dedupe=all) -> item, in file order
  first_line: dict[str, int] = {}
  try:
    f = open(path, "rb")
  except OSError as e:
    raise PredictionsError(f"predictions file {path}: {e.strerror or e}") from None
  with f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path} line {lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise PredictionsError(
          f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        ) from None
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise PredictionsError(f"{where}: not JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise PredictionsError(f"{where}: expected a JSON object, got {type(row).__name__}")
      rid = row.get("id")
      if rid is None or rid == "":
        raise PredictionsError(f"{where}: no 'id' field")
      if isinstance(rid, bool) or not isinstance(rid, str | int):
        raise PredictionsError(f"{where}: id {rid!r} must be a string or an integer")
      rid = str(rid)
      try:
        confidence = _confidence(row.get("confidence"))
      except ValueError as e:
        raise PredictionsError(f"{where} (id {rid}): {e}; it must be a number in [0, 1]") from None
      item = {"line": lineno, "id": rid, "row": row, "confidence": confidence}
      if rid in first_line and dedupe == "error":
        raise PredictionsError(
          f"{where}: duplicate id {rid!r} (first on line {first_line[rid]}); "
          "keep one row per id or pass --dedupe first|last|all"
        )
      first_line.setdefault(rid, lineno)
      if dedupe == "all":
        items[lineno] = item
      elif dedupe == "last" or rid not in items:
        items.pop(rid, None)  # "last": the row takes the place of the one it replaces
        items[rid] = item
  return sorted(items.values(), key=lambda item: item["line"])


def grade_row(
  benchmark: str, item: Mapping[str, Any], examples: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
  """One graded output row (`item` from read_predictions): id, correct, extracted, answer,
  confidence, groups, or the error that kept it from being graded."""
  line, rid, row = item["line"], item["id"], item["row"]
  out: dict[str, Any] = {"line": line, "id": rid, "correct": None}
  example = examples.get(rid)
  if example is None:
    out["error"] = f"line {line}: id {rid!r} is not in {benchmark}"
    return out
  response = row.get("response")
  if not isinstance(response, str):
    out["error"] = f"line {line} (id {rid}): 'response' must be a string, got {type(response).__name__}"
    return out
  correct, extracted = answers.grade(benchmark, response, example)
  out.update(
    correct=bool(correct), extracted=extracted, answer=example["answer"], confidence=item["confidence"]
  )
  out.update({k: example.get(k, "") for k in GROUP_KEYS})
  return out


def headline(summary: Mapping[str, Any]) -> str:
  """The accuracy and what it stands on: "accuracy 0.750 on 3 of 304 problems (coverage 1.0%)"."""
  acc = summary.get("accuracy")
  acc_text = "-" if acc is None or not math.isfinite(acc) else f"{acc:.3f}"
  answered, problems = summary["problems_answered"], summary["problems"]
  text = (
    f"accuracy {acc_text} on {answered} of {problems} problems (coverage {100 * summary['coverage']:.1f}%)"
  )
  if summary["graded"] != answered:
    text += f", {summary['graded']} graded rows"
  return text


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
    "coverage": len(answered & set(problems)) / len(problems) if problems else 0.0,
    "accuracy": metrics.accuracy([r["correct"] for r in ok]),
    "by": {k: metrics.accuracy_by(ok, k) for k in GROUP_KEYS},
  }
  conf = [(r["confidence"], r["correct"]) for r in ok if r.get("confidence") is not None]
  if conf:
    c, y = zip(*conf)
    out["calibration"] = {"rows_with_confidence": len(conf), **metrics.calibration_summary(c, y, n_bins)}
    out["reliability"] = metrics.reliability_bins(c, y, n_bins)
  out["error_messages"] = [r["error"] for r in graded if r.get("error")][:20]
  out["headline"] = headline(out)
  return out


def evaluate_file(
  benchmark: str,
  dataset: Sequence[Mapping[str, Any]],
  predictions: str | pathlib.Path,
  out_dir: str | pathlib.Path,
  dedupe: str = "error",
  rows: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
  """Grade `predictions` (or its `rows`, already read by read_predictions) against `dataset`;
  write graded.jsonl, report.json, report.md and (with confidences) reliability.png into
  out_dir, holding its lock. The file is read and checked whole first (PredictionsError), and
  every output is written to a temporary file and renamed in place at the end: a bad file or a
  killed run leaves an earlier run's outputs as they were. Returns the report."""
  out_dir = pathlib.Path(out_dir)
  with runs.locked(out_dir):
    if rows is None:
      rows = read_predictions(predictions, dedupe)
    examples = {ex["id"]: ex for ex in dataset}
    graded = [grade_row(benchmark, item, examples) for item in rows]
    split = getattr(dataset, "split", "")
    summary = summarize(graded, benchmark, split, list(examples))
    summary.update(predictions=str(predictions), dedupe=dedupe)
    conf = [(r["confidence"], r["correct"]) for r in graded if r.get("correct") is not None]
    conf = [(c, y) for c, y in conf if c is not None]
    # Each output is written to a temporary file beside it; the renames come together at the
    # end, so a failure on the way leaves the earlier run's files as they were.
    with contextlib.ExitStack() as outputs:

      def staged(name: str) -> pathlib.Path:
        return outputs.enter_context(runs.replacing(out_dir / name))

      runs.write_lines(staged("graded.jsonl"), graded)
      runs.write_json(staged("report.json"), summary)
      runs.write_text(staged("report.md"), report.markdown_report(summary, f"{benchmark} {split}"))
      if conf:
        c, y = zip(*conf)
        report.plot_reliability(c, y, staged("reliability.png"), title=f"{benchmark} {split}")
    if not conf:  # an earlier run's plot would describe other predictions
      (out_dir / "reliability.png").unlink(missing_ok=True)
  return summary


def human_summary(summary: Mapping[str, Any]) -> str:
  keys = ("benchmark", "split", "rows", "graded", "errors", "problems", "problems_answered", "coverage")
  rows = [{"metric": k, "value": summary[k]} for k in (*keys, "accuracy") if k in summary]
  rows += [{"metric": k, "value": v} for k, v in (summary.get("calibration") or {}).items()]
  parts = [report.text_table(rows, ["metric", "value"])]
  subjects = summary.get("by", {}).get("subject") or {}
  if subjects:
    parts.append(report.text_table(report.group_rows(subjects, "subject")))
  return "\n\n".join([*parts, summary["headline"]])
