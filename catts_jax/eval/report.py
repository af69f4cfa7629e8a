"""Reports: Markdown tables, a plain-text table for the terminal, and PNG plots (reliability
diagram, accuracy vs N per method, accuracy and confidence vs perturbation strength). Plots use
matplotlib's Agg backend, so no display is needed. Writing report.json and the rest of the
`--out` contract is catts_jax.runs'.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from catts_jax import runs
from catts_jax.eval import metrics


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return "-" if not math.isfinite(value) else f"{value:.4f}"
  return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
  columns = list(columns or (rows[0].keys() if rows else []))
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_fmt(row.get(c, "")).replace("|", "\\|") for c in columns) + " |")
  return "\n".join(lines)


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
  """Aligned columns for a terminal."""
  columns = list(columns or (rows[0].keys() if rows else []))
  cells = [columns] + [[_fmt(row.get(c, "")) for c in columns] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  out = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
  out.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(out)


def group_rows(groups: Mapping[str, Mapping[str, Any]], label: str) -> list[dict[str, Any]]:
  """Rows of an `accuracy_by` result, for the tables above."""
  return [
    {label: g, "accuracy": v["accuracy"], "correct": v["correct"], "total": v["total"]}
    for g, v in groups.items()
  ]


def markdown_report(report: Mapping[str, Any], title: str = "Evaluation") -> str:
  """Summary (scalars), then one table per breakdown in report["by"]."""
  scalars = [{"metric": k, "value": v} for k, v in report.items() if isinstance(v, int | float | str)]
  parts = [f"# {title}", "", markdown_table(scalars, ["metric", "value"])]
  for name in ("calibration",):
    if isinstance(report.get(name), Mapping):
      rows = [{"metric": k, "value": v} for k, v in report[name].items()]
      parts += ["", f"## {name}", "", markdown_table(rows, ["metric", "value"])]
  for key, groups in (report.get("by") or {}).items():
    if groups:
      parts += ["", f"## accuracy by {key}", "", markdown_table(group_rows(groups, key))]
  return "\n".join(parts) + "\n"


# ---- plots -------------------------------------------------------------------------------------


def _pyplot():
  import matplotlib

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt

  return plt


def plot_reliability(confidence, correct, path, n_bins: int = 15, title: str = "Reliability") -> pathlib.Path:
  """Bars: accuracy per equal-width confidence bin; the diagonal is perfect calibration."""
  plt = _pyplot()
  bins = metrics.reliability_bins(confidence, correct, n_bins)
  fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
  width = 1.0 / n_bins
  filled = [b for b in bins if b["count"]]
  ax.bar([b["lower"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
         edgecolor="black", label="accuracy")  # fmt: skip
  ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
  ece = metrics.ece(confidence, correct, n_bins)
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{title} (ECE {ece:.3f})")
  ax.legend(loc="upper left")
  return _save(fig, path)


def plot_scaling(
  curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path, title: str = "Test-time scaling"
) -> pathlib.Path:
  """Accuracy (points) vs N on a log2 axis, one line per method, slope in the legend."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
  for name, (ns, acc) in curves.items():
    label = name
    if len(ns) >= 2:
      label += f" (beta {metrics.scaling_slope(ns, acc):.2f})"
    ax.plot(ns, acc, marker="o", label=label)
  ax.set_xscale("log", base=2)
  ax.set(xlabel="N (samples)", ylabel="accuracy (%)", title=title)
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def plot_perturbation(
  strengths: Sequence[float],
  series: Mapping[str, Mapping[str, Sequence[float]]],
  path,
  xlabel: str = "perturbation strength",
  title: str = "Accuracy and confidence under perturbation",
) -> pathlib.Path:
  """series: {model: {"accuracy": [...], "confidence": [...]}} in [0, 1] per strength; solid
  lines accuracy, dashed confidence, one colour per model."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
  for i, (name, s) in enumerate(series.items()):
    color = f"C{i}"
    if "accuracy" in s:
      ax.plot(strengths, s["accuracy"], "-o", color=color, label=f"{name} accuracy")
    if "confidence" in s:
      ax.plot(strengths, s["confidence"], "--s", color=color, label=f"{name} confidence")
  ax.set(xlabel=xlabel, ylabel="value", ylim=(0, 1), title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  return _save(fig, path)


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  fig.tight_layout()
  with runs.replacing(path) as tmp:  # a killed run leaves the earlier plot whole
    fig.savefig(tmp)
  fig.clf()
  import matplotlib.pyplot as plt

  plt.close(fig)
  return path
