"""Accuracy, calibration and test-time-scaling metrics on numpy arrays.

Confidences are probabilities in [0, 1] (e.g. exp(-NMLP)); `correct` is 0/1 per answer. Every
function returns plain floats / dicts so results go straight into report.json. Empty inputs
and undefined cases (AUROC with one class) give NaN rather than raising.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def _arrays(confidence, correct, probabilities: bool = True) -> tuple[np.ndarray, np.ndarray]:
  c = np.asarray(confidence, dtype=np.float64).reshape(-1)
  y = np.asarray(correct, dtype=np.float64).reshape(-1)
  if c.shape != y.shape:
    raise ValueError(f"confidence and correct differ in length: {c.shape} vs {y.shape}")
  in_range = not probabilities or not c.size or (c.min() >= 0 and c.max() <= 1)
  if not (np.isfinite(c).all() and in_range):
    raise ValueError("confidence must be finite" + (" and in [0, 1]" if probabilities else ""))
  return c, y


# ---- accuracy ----------------------------------------------------------------------------------


def accuracy(correct) -> float:
  y = np.asarray(correct, dtype=np.float64).reshape(-1)
  return float(y.mean()) if y.size else float("nan")


def _group_values(value: Any) -> list[str]:
  if isinstance(value, list | tuple):
    return [str(v) for v in value]  # e.g. MathVista skills: a problem counts in each
  return [str(value)]


def accuracy_by(rows: Iterable[Mapping[str, Any]], key: str) -> dict[str, dict[str, float]]:
  """{group: {accuracy, correct, total}} over rows with a boolean "correct" and `key`
  (dots reach into nested dicts: "metadata.source"). Rows without the key are skipped."""
  tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
  for row in rows:
    value: Any = row
    for part in key.split("."):
      value = value.get(part) if isinstance(value, Mapping) else None
    if value is None or value == "":
      continue
    for group in _group_values(value):
      tally[group][0] += int(bool(row["correct"]))
      tally[group][1] += 1
  return {g: {"accuracy": c / n, "correct": c, "total": n} for g, (c, n) in sorted(tally.items())}


# ---- calibration -------------------------------------------------------------------------------


def reliability_bins(confidence, correct, n_bins: int = 15, adaptive: bool = False) -> list[dict[str, float]]:
  """Per bin: lower/upper edge, count, mean confidence, accuracy. Equal-width bins on [0, 1]
  (confidence 1.0 falls in the last), or equal-mass bins over the sorted confidences."""
  c, y = _arrays(confidence, correct)
  if adaptive:
    order = np.argsort(c, kind="stable")
    groups = [g for g in np.array_split(order, n_bins) if g.size]
    edges = [(float(c[g].min()), float(c[g].max())) for g in groups]
  else:
    ids = np.minimum((c * n_bins).astype(int), n_bins - 1)
    groups = [np.flatnonzero(ids == b) for b in range(n_bins)]
    edges = [(b / n_bins, (b + 1) / n_bins) for b in range(n_bins)]
  out = []
  for g, (lo, hi) in zip(groups, edges):
    out.append(
      {
        "lower": lo,
        "upper": hi,
        "count": int(g.size),
        "confidence": float(c[g].mean()) if g.size else float("nan"),
        "accuracy": float(y[g].mean()) if g.size else float("nan"),
      }
    )
  return out


def ece(confidence, correct, n_bins: int = 15, adaptive: bool = False) -> float:
  """Expected calibration error: sum over bins of |bin| / n * |accuracy - confidence|."""
  c, _ = _arrays(confidence, correct)
  if not c.size:
    return float("nan")
  bins = reliability_bins(confidence, correct, n_bins, adaptive)
  return float(sum(b["count"] / c.size * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def brier(confidence, correct) -> float:
  c, y = _arrays(confidence, correct)
  return float(np.mean((c - y) ** 2)) if c.size else float("nan")


def _midranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), dtype=np.float64)
  sorted_x = x[order]
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
      j += 1
    ranks[order[i : j + 1]] = (i + j) / 2 + 1  # ties share the average rank
    i = j + 1
  return ranks


def auroc(confidence, correct) -> float:
  """P(conf of a random correct answer > conf of a random wrong one), ties counting 1/2
  (Mann-Whitney U with mid-ranks). NaN unless both classes occur."""
  c, y = _arrays(confidence, correct)
  pos = y > 0.5
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _midranks(c)
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def within_group_auroc(groups: Iterable[tuple[Any, Any]]) -> float:
  """`auroc` within groups, pooled: P(a correct item outranks a wrong one of the *same* group),
  over every such pair of every group that has both (NaN if none does).

  For the samples of one problem this is the only ranking a confidence-weighted vote can use;
  the plain `auroc` over problems also rewards knowing which problems are hard. Only ranks
  count, so any score works (a vote weight need not be a probability)."""
  wins = pairs = 0.0
  for confidence, correct in groups:
    c, y = _arrays(confidence, correct, probabilities=False)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos and n_neg:
      wins += _midranks(c)[pos].sum() - n_pos * (n_pos + 1) / 2
      pairs += n_pos * n_neg
  return float(wins / pairs) if pairs else float("nan")


# ---- selective prediction ----------------------------------------------------------------------


def risk_coverage(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
  """(coverage k/n, risk = 1 - accuracy of the k most confident) for k = 1..n. Within a run of
  tied confidences the order is unknowable, so the expected accuracy is used (linear inside
  the tie block): the curve does not depend on how ties happen to be sorted."""
  c, y = _arrays(confidence, correct)
  n = c.size
  if not n:
    return np.zeros(0), np.zeros(0)
  order = np.argsort(-c, kind="stable")
  cs, ys = c[order], y[order]
  cum = np.cumsum(ys)
  expected = np.empty(n)
  start = 0
  while start < n:
    end = start
    while end + 1 < n and cs[end + 1] == cs[start]:
      end += 1
    before = cum[start - 1] if start else 0.0
    block = cum[end] - before
    size = end - start + 1
    expected[start : end + 1] = before + block * np.arange(1, size + 1) / size
    start = end + 1
  k = np.arange(1, n + 1)
  return k / n, 1.0 - expected / k


def aurc(confidence, correct) -> float:
  """Area under the risk-coverage curve (mean risk over k = 1..n); lower is better."""
  _, risk = risk_coverage(confidence, correct)
  return float(risk.mean()) if risk.size else float("nan")


def selective_accuracy(confidence, correct, coverage: float) -> float:
  """Accuracy on the most confident `coverage` fraction (at least one answer)."""
  cov, risk = risk_coverage(confidence, correct)
  if not cov.size:
    return float("nan")
  k = max(1, int(round(coverage * cov.size)))
  return float(1.0 - risk[k - 1])


# ---- perturbations -----------------------------------------------------------------------------


def confidence_drop(original, perturbed) -> dict[str, float]:
  """Mean confidence under the original and the perturbed condition (paired answers), the
  drop and the relative drop. A perceptually sensitive model has a positive drop."""
  a = np.asarray(original, dtype=np.float64).reshape(-1)
  b = np.asarray(perturbed, dtype=np.float64).reshape(-1)
  if a.shape != b.shape or not a.size:
    raise ValueError(f"need equally many paired confidences, got {a.shape} and {b.shape}")
  ma, mb = float(a.mean()), float(b.mean())
  return {
    "original": ma,
    "perturbed": mb,
    "drop": ma - mb,
    "relative_drop": (ma - mb) / ma if ma else float("nan"),
  }


def drop_ratio(drop_new: float, drop_base: float) -> float:
  """How many times larger one model's confidence drop is than another's (the paper: 4.3x)."""
  return float(drop_new / drop_base) if drop_base else float("nan")


# ---- test-time scaling -------------------------------------------------------------------------


def scaling_slope(ns: Sequence[float], accuracy_points: Sequence[float]) -> float:
  """Least-squares slope of accuracy (in points, 0-100) against log2 N: points per doubling."""
  x = np.log2(np.asarray(ns, dtype=np.float64))
  a = np.asarray(accuracy_points, dtype=np.float64)
  if x.shape != a.shape or x.size < 2 or np.ptp(x) == 0:
    raise ValueError("need at least two distinct N with one accuracy each")
  x = x - x.mean()
  return float((x * (a - a.mean())).sum() / (x * x).sum())


def scaling_slope_ci(
  ns: Sequence[float], correct, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
  """Slope beta from per-problem results correct[len(ns), problems] and a percentile bootstrap
  interval over problems (the same resampled problems at every N)."""
  y = np.asarray(correct, dtype=np.float64)
  if y.ndim != 2 or y.shape[0] != len(ns) or y.shape[1] == 0:
    raise ValueError(f"correct must be [len(ns)={len(ns)}, problems], got {y.shape}")
  beta = scaling_slope(ns, 100.0 * y.mean(axis=1))
  rng = np.random.default_rng(seed)
  x = np.log2(np.asarray(ns, dtype=np.float64))
  x = x - x.mean()
  idx = rng.integers(0, y.shape[1], size=(n_boot, y.shape[1]))
  acc = 100.0 * y[:, idx].mean(axis=2)  # [len(ns), n_boot]
  slopes = (x[:, None] * (acc - acc.mean(axis=0))).sum(axis=0) / (x * x).sum()
  lo, hi = np.quantile(slopes, [(1 - level) / 2, (1 + level) / 2])
  return {"beta": beta, "low": float(lo), "high": float(hi), "level": level, "n_boot": n_boot}


def paired_difference_ci(a, b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
  """mean(a) - mean(b) in points (0-100) for two methods' per-problem results on the same
  problems, with a percentile bootstrap interval over problems (both resampled together)."""
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  if a.ndim != 1 or a.shape != b.shape or a.size == 0:
    raise ValueError(f"need two equal-length per-problem result vectors, got {a.shape} and {b.shape}")
  d = 100.0 * (a - b)
  idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
  lo, hi = np.quantile(d[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
  return {"diff": float(d.mean()), "low": float(lo), "high": float(hi), "level": level, "n_boot": n_boot}


def calibration_summary(confidence, correct, n_bins: int = 15) -> dict[str, float]:
  """The calibration block of a report."""
  return {
    "ece": ece(confidence, correct, n_bins),
    "adaptive_ece": ece(confidence, correct, n_bins, adaptive=True),
    "brier": brier(confidence, correct),
    "auroc": auroc(confidence, correct),
    "aurc": aurc(confidence, correct),
    "selective_accuracy@50": selective_accuracy(confidence, correct, 0.5),
    "mean_confidence": float(np.mean(confidence)) if len(confidence) else float("nan"),
  }
