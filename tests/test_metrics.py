"""Metrics against values computed by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from catts_jax.eval import metrics

CONF = [0.1, 0.4, 0.8, 0.9]
CORRECT = [0, 1, 1, 0]


def test_accuracy_and_groups():
  assert metrics.accuracy([1, 0, 1, 1]) == 0.75
  assert math.isnan(metrics.accuracy([]))
  rows = [
    {"correct": True, "subject": "a", "metadata": {"skills": ["x", "y"]}},
    {"correct": False, "subject": "a", "metadata": {"skills": ["x"]}},
    {"correct": True, "subject": "b", "metadata": {}},
  ]
  assert metrics.accuracy_by(rows, "subject") == {
    "a": {"accuracy": 0.5, "correct": 1, "total": 2},
    "b": {"accuracy": 1.0, "correct": 1, "total": 1},
  }
  skills = metrics.accuracy_by(rows, "metadata.skills")
  assert skills["x"]["total"] == 2 and skills["y"] == {"accuracy": 1.0, "correct": 1, "total": 1}


def test_ece_equal_width():
  # 15 bins: every answer alone in its bin -> mean |acc - conf| = (0.1 + 0.6 + 0.2 + 0.9) / 4.
  assert metrics.ece(CONF, CORRECT) == pytest.approx(0.45)
  # 2 bins: [0, .5) holds 0.1, 0.4 (acc .5, conf .25); [.5, 1] holds 0.8, 0.9 (acc .5, conf .85).
  assert metrics.ece(CONF, CORRECT, n_bins=2) == pytest.approx(0.5 * 0.25 + 0.5 * 0.35)
  assert metrics.ece([1.0, 1.0], [1, 1]) == 0.0  # confidence 1 falls in the last bin
  assert metrics.ece([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.0)
  bins = metrics.reliability_bins(CONF, CORRECT, n_bins=15)
  assert len(bins) == 15 and sum(b["count"] for b in bins) == 4 and bins[13]["confidence"] == 0.9


def test_ece_adaptive():
  conf = [0.1, 0.2, 0.3, 0.35, 0.9, 0.95]
  correct = [0, 0, 1, 1, 1, 1]
  # 3 equal-mass bins: {.1,.2} acc 0 conf .15; {.3,.35} acc 1 conf .325; {.9,.95} acc 1 conf .925.
  expected = (0.15 + 0.675 + 0.075) / 3
  assert metrics.ece(conf, correct, n_bins=3, adaptive=True) == pytest.approx(expected)
  assert metrics.ece(CONF, CORRECT, n_bins=2, adaptive=True) == pytest.approx(0.3)


def test_brier():
  assert metrics.brier(CONF, CORRECT) == pytest.approx((0.01 + 0.36 + 0.04 + 0.81) / 4)


def _pairwise_auroc(conf, correct):
  pos = [c for c, y in zip(conf, correct) if y]
  neg = [c for c, y in zip(conf, correct) if not y]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_auroc_with_ties():
  # Correct at 0.9 and 0.5, wrong at 0.9, 0.5, 0.1: (0.5 + 1 + 1) + (0 + 0.5 + 1) = 4 of 6 pairs.
  assert metrics.auroc([0.9, 0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0, 0]) == pytest.approx(4 / 6)
  assert metrics.auroc([0.5] * 4, [1, 0, 1, 0]) == 0.5
  assert metrics.auroc([0.9, 0.1], [1, 0]) == 1.0 and metrics.auroc([0.9, 0.1], [0, 1]) == 0.0
  assert math.isnan(metrics.auroc([0.3, 0.4], [1, 1]))
  rng = np.random.default_rng(0)
  conf = rng.integers(0, 5, 40) / 4  # many ties
  correct = rng.integers(0, 2, 40)
  assert metrics.auroc(conf, correct) == pytest.approx(_pairwise_auroc(conf, correct))


def test_within_group_auroc_ranks_only_inside_each_group():
  # Problem A: all confident (0.9 right, 0.8 wrong); B: unsure (0.3 wrong, 0.2 right). Across
  # problems confidence separates right from wrong half the time, inside A it always does,
  # inside B never: pooled over the 2 within-problem pairs, 1/2.
  groups = [([0.9, 0.8], [1, 0]), ([0.3, 0.2], [0, 1])]
  assert metrics.within_group_auroc(groups) == 0.5
  assert metrics.auroc([0.9, 0.8, 0.3, 0.2], [1, 0, 0, 1]) == 0.5
  # A one-class group adds no pairs; ties count a half: 2 pairs won in the second, 1/2 in the third.
  groups = [([0.9, 0.9, 0.9], [1, 1, 1]), ([0.9, 0.2, 0.2], [1, 0, 0]), ([0.2, 0.2], [1, 0])]
  assert metrics.within_group_auroc(groups) == pytest.approx((2 + 0.5) / 3)
  # No group with both classes: undefined. Scores need not be probabilities.
  assert math.isnan(metrics.within_group_auroc([([0.3, 0.4], [1, 1]), ([12.0], [0])]))
  rng = np.random.default_rng(1)
  groups = [(rng.integers(0, 4, 6) / 3, rng.integers(0, 2, 6)) for _ in range(20)]
  pooled = [_pairwise_auroc(c, y) * y.sum() * (6 - y.sum()) for c, y in groups if 0 < y.sum() < 6]
  pairs = sum(y.sum() * (6 - y.sum()) for _, y in groups)
  assert metrics.within_group_auroc(groups) == pytest.approx(sum(pooled) / pairs)
  with pytest.raises(ValueError, match="finite"):
    metrics.within_group_auroc([([0.1, float("nan")], [1, 0])])


def test_selective_accuracy_and_aurc():
  # Most confident first: correct, wrong, correct -> risks 0, 1/2, 1/3.
  assert metrics.aurc([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx((0 + 0.5 + 1 / 3) / 3)
  assert metrics.selective_accuracy([0.9, 0.8, 0.7], [1, 0, 1], coverage=1 / 3) == 1.0
  assert metrics.selective_accuracy([0.9, 0.8, 0.7], [1, 0, 1], coverage=2 / 3) == 0.5
  # Ties: the expected risk, whatever order the tied answers were stored in.
  assert metrics.aurc([0.5, 0.5], [1, 0]) == metrics.aurc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
  cov, risk = metrics.risk_coverage([0.9, 0.5, 0.5, 0.5], [0, 1, 1, 0])
  assert cov.tolist() == [0.25, 0.5, 0.75, 1.0]
  assert risk.tolist() == pytest.approx([1.0, 1 - (2 / 3) / 2, 1 - (4 / 3) / 3, 0.5])


def test_confidence_drop():
  d = metrics.confidence_drop([0.8, 0.6], [0.4, 0.4])
  assert d["drop"] == pytest.approx(0.3) and d["relative_drop"] == pytest.approx(0.3 / 0.7)
  assert metrics.drop_ratio(0.43, 0.1) == pytest.approx(4.3)
  assert metrics.confidence_drop([0.5], [0.6])["drop"] == pytest.approx(-0.1)  # confidence rose
  with pytest.raises(ValueError, match="paired"):
    metrics.confidence_drop([0.5, 0.4], [0.6])


def test_scaling_slope():
  ns = [1, 2, 4, 8, 16, 32]
  assert metrics.scaling_slope(ns, [20 + 3 * math.log2(n) for n in ns]) == pytest.approx(3.0)
  # Least squares on noisy points: x = log2 N centred = [-1, 0, 1], y = [10, 14, 15] -> 5 / 2.
  assert metrics.scaling_slope([1, 2, 4], [10, 14, 15]) == pytest.approx(2.5)
  with pytest.raises(ValueError):
    metrics.scaling_slope([4, 4], [1, 2])


def test_scaling_slope_bootstrap():
  rng = np.random.default_rng(1)
  ns = [1, 2, 4, 8, 16]
  p = np.array([0.2, 0.25, 0.3, 0.35, 0.4])[:, None]  # +5 points per doubling
  correct = rng.random((5, 400)) < p
  ci = metrics.scaling_slope_ci(ns, correct, n_boot=300, seed=0)
  assert ci["beta"] == pytest.approx(metrics.scaling_slope(ns, 100 * correct.mean(axis=1)))
  assert ci["low"] < ci["beta"] < ci["high"] and ci["low"] < 5 < ci["high"]
  assert ci == metrics.scaling_slope_ci(ns, correct, n_boot=300, seed=0)
  flat = metrics.scaling_slope_ci([1, 2], np.ones((2, 10)), n_boot=50)
  assert flat["beta"] == flat["low"] == flat["high"] == 0.0


def test_paired_difference_bootstrap():
  rng = np.random.default_rng(2)
  base = rng.random(500) < 0.5
  better = base | (rng.random(500) < 0.2)  # a right answer kept, some wrong ones fixed
  ci = metrics.paired_difference_ci(better, base, n_boot=400)
  assert ci["diff"] == pytest.approx(100 * (better.mean() - base.mean()))
  assert 0 < ci["low"] < ci["diff"] < ci["high"]
  # Paired: the same gain on problems that vary a lot between them has a narrow interval.
  assert ci["high"] - ci["low"] < 6
  swapped = metrics.paired_difference_ci(base, better, n_boot=400)
  assert swapped["diff"] == -ci["diff"] and swapped["high"] < 0
  same = metrics.paired_difference_ci(base, base, n_boot=50)
  assert same["diff"] == same["low"] == same["high"] == 0.0
  with pytest.raises(ValueError, match="equal-length"):
    metrics.paired_difference_ci([1, 0], [1])


def test_bad_inputs():
  with pytest.raises(ValueError, match="differ in length"):
    metrics.ece([0.5], [1, 0])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrics.brier([1.5], [1])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrics.auroc([float("nan")], [1])
  assert math.isnan(metrics.ece([], []))
