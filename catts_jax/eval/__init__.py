"""Grading and metrics.

  from catts_jax.eval import answers, metrics, report
  correct, extracted = answers.grade("mmmu", response, example)   # never raises on a response
  metrics.ece(conf, correct), metrics.auroc(conf, correct), metrics.scaling_slope_ci(ns, correct)
  report.plot_reliability(conf, correct, "out/reliability.png")

answers: per-benchmark rules (module docstring lists where they differ from the official
evaluators); normalize / parsing: the string machinery under it; metrics: accuracy by group, ECE
(equal-width and adaptive), Brier, AUROC, risk-coverage / AURC, confidence drop, scaling slope;
report: JSON, Markdown and terminal tables, PNG plots; predictions: grading a predictions file.
"""

from catts_jax.eval.answers import GRADERS, extract, grade

__all__ = ["GRADERS", "extract", "grade"]
