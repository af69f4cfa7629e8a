"""Report files: Markdown, terminal tables and PNG plots (report.json: test_runs.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from catts_jax.eval import report


def test_tables():
  rows = [{"method": "a|b", "acc": 0.5}, {"method": "c", "acc": float("nan")}]
  md = report.markdown_table(rows)
  assert md.splitlines() == ["| method | acc |", "|---|---|", "| a\\|b | 0.5000 |", "| c | - |"]
  text = report.text_table(rows)
  assert text.splitlines()[0].split() == ["method", "acc"] and "0.5000" in text
  summary = {
    "accuracy": 0.5,
    "calibration": {"ece": 0.1},
    "by": {"subject": {"x": {"accuracy": 1.0, "correct": 1, "total": 1}}},
  }
  md = report.markdown_report(summary, "t")
  assert "## calibration" in md and "## accuracy by subject" in md and "| x | 1.0000 | 1 | 1 |" in md


def _png(path):
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as im:
    return im.size


def test_plots(tmp_path):
  rng = np.random.default_rng(0)
  conf = rng.random(200)
  correct = rng.random(200) < conf
  w, h = _png(report.plot_reliability(conf, correct, tmp_path / "reliability.png"))
  assert w > 100 and h > 100
  curves = {"majority": ([1, 2, 4, 8], [23, 25, 27, 28]), "ca-tts": ([1, 2, 4, 8], [23, 30, 36, 41])}
  _png(report.plot_scaling(curves, tmp_path / "scaling.png"))
  series = {
    "base": {"accuracy": [0.6, 0.4, 0.2], "confidence": [0.9, 0.9, 0.88]},
    "cdrl": {"accuracy": [0.62, 0.45, 0.25]},
  }
  _png(
    report.plot_perturbation([0, 250, 500], series, tmp_path / "plots" / "perturb.png", xlabel="noise step")
  )
