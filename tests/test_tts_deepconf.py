"""DeepConf baselines against brute-force numpy references and hand-made traces."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from catts_jax.tts import deepconf
from catts_jax.tts.voting import VoteTable


def ref_window_means(conf, length, window):
  w = min(window, length)
  return [float(np.mean(conf[s : s + w])) for s in range(length - w + 1)] if length else []


def ref_stop(conf, length, window, threshold):
  """Token by token, as the generator sees it: a full window ending at t, below the bar."""
  w = min(window, length)
  for t in range(length):
    if t + 1 >= w and np.mean(conf[t - w + 1 : t + 1]) < threshold:
      return t
  return None


def ref_percentile(values, q):
  """Linear interpolation between order statistics at the exact position (n - 1) * q / 100."""
  s = sorted(values)
  pos = (len(s) - 1) * Fraction(q) / 100
  lo = math.floor(pos)
  hi = min(lo + 1, len(s) - 1)
  return s[lo] + float(pos - lo) * (s[hi] - s[lo])


def ref_vote(answers, weights):
  totals = {}
  for a, w in zip(answers, weights):
    if a:
      totals[a] = totals.get(a, 0.0) + w
  return max(totals, key=totals.get) if totals else None  # max keeps the first on ties


# --- offline ------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_filter_keeps_the_top_eta_by_rank(keep):
  rng = np.random.default_rng(0)
  for n in range(1, 65):
    c = rng.normal(10, 2, n)
    ranks = np.argsort(np.argsort(c))  # 0 = least confident
    first_kept = math.ceil((n - 1) * (1 - Fraction(str(keep))))  # np.percentile's exact position
    np.testing.assert_array_equal(deepconf.deepconf_filter(c, keep), ranks >= first_kept, err_msg=f"n={n}")


def test_filter_counts_and_ties():
  c = np.arange(16.0)
  assert deepconf.deepconf_filter(c, 0.1).sum() == 2  # 90th percentile of 16 = 13.5
  assert deepconf.deepconf_filter(c, 0.9).sum() == 14  # 10th percentile = 1.5
  assert deepconf.deepconf_filter(np.arange(11.0), 0.9).sum() == 10  # exactly at 1.0: kept
  assert deepconf.deepconf_filter(np.full(5, 3.0), 0.1).all()
  with pytest.raises(ValueError, match="keep_fraction"):
    deepconf.deepconf_filter(c, 0.0)


def test_offline_vote_filtering_flips_the_answer():
  answers, conf = ["A", "A", "A", "B"], [2.0, 2.0, 2.0, 5.0]
  assert deepconf.deepconf_vote(answers, conf, 1.0).winner() == "A"  # A 6 > B 5
  t = deepconf.deepconf_vote(answers, conf, 0.1)  # keeps only B (90th percentile = 4.1)
  assert t.weights() == {"B": 5.0} and t.winner() == "B"
  assert len(t.entries) == 4  # every trace is logged, the filtered ones without an answer


def test_offline_vote_matches_a_reference_on_random_sets():
  rng = np.random.default_rng(1)
  for _ in range(200):
    n = int(rng.integers(1, 33))
    answers = [None if u < 0.15 else "ABC"[int(u * 3) % 3] for u in rng.uniform(size=n)]
    conf = rng.uniform(5, 15, n)
    keep = float(rng.choice([0.1, 0.9]))
    thr = ref_percentile(conf.tolist(), 100 * (1 - Fraction(str(keep))))
    kept = [a if c >= thr else None for a, c in zip(answers, conf)]
    assert deepconf.deepconf_vote(answers, conf, keep).winner() == ref_vote(kept, conf)


# --- trace confidences ----------------------------------------------------------------------


def test_window_means_and_lowest_group_against_loops():
  rng = np.random.default_rng(2)
  for _ in range(200):
    L = int(rng.integers(1, 30))
    conf = rng.uniform(0, 10, L + 5)  # tokens past `length` must be ignored
    length, window = int(rng.integers(0, L + 1)), int(rng.integers(1, 12))
    np.testing.assert_allclose(
      deepconf.window_means(conf, length, window), ref_window_means(conf, length, window)
    )
    expected = min(ref_window_means(conf, length, window), default=0.0)
    assert deepconf.lowest_group_confidence(conf, length, window) == pytest.approx(expected)


def test_lowest_group_matches_the_scorer():
  from catts_jax.scoring import ConfidenceConfig, trace_confidences

  rng = np.random.default_rng(3)
  conf = rng.uniform(0, 10, (6, 20)).astype(np.float32)
  lengths = np.array([1, 3, 7, 12, 19, 20])
  mask = np.arange(20)[None] < lengths[:, None]
  cfg = ConfidenceConfig(window=5)
  scored = np.asarray(trace_confidences(conf * mask, mask, cfg)["conf_min_window"])
  ours = [deepconf.lowest_group_confidence(conf[i], lengths[i], 5) for i in range(6)]
  np.testing.assert_allclose(ours, scored, rtol=1e-5)


# --- online -------------------------------------------------------------------------------


@pytest.mark.parametrize("keep,q", [(0.1, 90), (0.9, 10), (0.5, 50)])
def test_online_threshold_is_the_warmup_percentile(keep, q):
  rng = np.random.default_rng(4)
  for n in (1, 2, 5, 16, 17):
    warm = rng.uniform(5, 15, n)
    assert deepconf.online_threshold(warm, keep) == pytest.approx(ref_percentile(warm.tolist(), q), rel=1e-12)
  assert deepconf.online_threshold([4.0, 5.0, 6.0], 0.9) == pytest.approx(4.2)
  assert deepconf.online_threshold(np.arange(11.0), 0.9) == 1.0  # exactly: eta 0.9 means q = 10
  with pytest.raises(ValueError, match="warm-up"):
    deepconf.online_threshold([], 0.9)


def test_online_stop_on_a_hand_trace():
  conf = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
  assert deepconf.online_stop(conf, 6, 2, 0.5) == 4  # window [1, 0] is 0.5, not below
  assert deepconf.online_stop(conf, 6, 2, 0.6) == 3
  assert deepconf.online_stop(conf, 3, 2, 0.6) is None  # the dip lies past the length
  assert deepconf.online_stop(conf, 6, 2, 0.0) is None
  assert deepconf.online_stop(conf, 6, 10, 0.75) == 5  # shorter than a window: mean 4/6 at the end
  assert deepconf.online_stop(conf, 6, 10, 0.5) is None
  assert deepconf.online_stop(conf, 0, 2, 9.0) is None


def test_online_stop_against_brute_force():
  rng = np.random.default_rng(5)
  for _ in range(500):
    L = int(rng.integers(1, 40))
    conf = rng.uniform(0, 10, L)
    length, window = int(rng.integers(1, L + 1)), int(rng.integers(1, 16))
    thr = float(rng.uniform(2, 8))
    stop = deepconf.online_stop(conf, length, window, thr)
    assert stop == ref_stop(conf, length, window, thr)
    assert (stop is None) == (deepconf.lowest_group_confidence(conf, length, window) >= thr)


def pad(rows, width=8):
  return np.array([r + [0.0] * (width - len(r)) for r in rows]), [len(r) for r in rows]


def test_simulate_online_early_stopping_flips_the_answer():
  confs, lengths = pad(
    [
      [5, 5, 5, 5],  # warm-up, A, lowest 5
      [4, 4, 4, 4],  # warm-up, A, lowest 4: under the bar, runs on, no vote
      [6, 6, 6],  # warm-up, B, lowest 6
      [6, 6, 1, 1, 6, 6],  # B: window [6, 1] = 3.5 < 4.2, stops at token 2
      [6, 2, 2, 6],  # B: stops at token 1
      [5, 5, 5, 5, 5],  # A: kept
      [6, 6, 6, 6, 6, 6, 6, 0],  # B: last window 3 < 4.2, stops at its last token
    ]
  )
  answers = ["A", "A", "B", "B", "B", "A", "B"]
  ones = np.ones(7)
  # Zero padding would stop every trace if it were read.
  r = deepconf.simulate_online(confs, lengths, answers, ones, warmup=3, keep_fraction=0.9, window=2)
  assert r.threshold == pytest.approx(4.2)  # 10th percentile of (5, 4, 6)
  np.testing.assert_array_equal(r.kept, [True, False, True, False, False, True, False])
  np.testing.assert_array_equal(r.stops, [-1, 1, -1, 2, 1, -1, 7])
  np.testing.assert_array_equal(r.tokens, [4, 4, 3, 3, 2, 5, 8])  # warm-up traces run to the end
  assert r.token_savings == pytest.approx(1 - 29 / 34)
  assert r.table.weights() == {"A": 2.0, "B": 1.0} and r.answer == "A"
  assert VoteTable.from_json(r.table.to_json()).winner() == "A"
  # Without early stopping the same votes say B (4 to 3).
  assert ref_vote(answers, ones) == "B"
  # Default weights: the lowest group confidences, A 5 + 5 against B 6.
  r = deepconf.simulate_online(confs, lengths, answers, warmup=3, keep_fraction=0.9, window=2)
  assert r.table.weights() == {"A": 10.0, "B": 6.0} and r.answer == "A"


def test_simulate_online_with_n_up_to_warmup_is_offline_deepconf():
  rng = np.random.default_rng(6)
  for n in (1, 5, 16):
    confs = rng.uniform(0, 10, (n, 12))
    lengths = rng.integers(1, 13, n)
    answers = ["ABC"[i] for i in rng.integers(0, 3, n)]
    r = deepconf.simulate_online(confs, lengths, answers, warmup=16, keep_fraction=0.1, window=4)
    lowest = [deepconf.lowest_group_confidence(confs[i], lengths[i], 4) for i in range(n)]
    np.testing.assert_array_equal(r.kept, deepconf.deepconf_filter(lowest, 0.1))
    np.testing.assert_array_equal(r.tokens, lengths)
    assert r.answer == deepconf.deepconf_vote(answers, lowest, 0.1).winner() and r.token_savings == 0.0


def test_simulate_online_against_a_brute_force_replay():
  rng = np.random.default_rng(7)
  for _ in range(100):
    n, L = int(rng.integers(1, 25)), int(rng.integers(1, 20))
    warmup, window = int(rng.integers(1, 10)), int(rng.integers(1, 8))
    keep = float(rng.choice([0.1, 0.9]))
    confs = rng.uniform(0, 10, (n, L))
    lengths = rng.integers(0, L + 1, n)
    answers = [
      None if lengths[i] == 0 or u < 0.1 else "ABCD"[int(u * 4) % 4]
      for i, u in enumerate(rng.uniform(size=n))
    ]
    r = deepconf.simulate_online(confs, lengths, answers, warmup=warmup, keep_fraction=keep, window=window)

    lowest = [min(ref_window_means(confs[i], lengths[i], window), default=0.0) for i in range(n)]
    n_warm = min(warmup, n)
    assert r.threshold == pytest.approx(ref_percentile(lowest[:n_warm], 100 * (1 - Fraction(str(keep)))))
    thr = r.threshold  # checked above; the rest is judged against the same bar
    # The authors' vote filter: lowest group confidence (0 for an empty trace) reaches the bar.
    kept = [c >= thr for c in lowest]
    tokens = []
    for i in range(n):
      stop = ref_stop(confs[i], lengths[i], window, thr)
      tokens.append(lengths[i] if i < n_warm or stop is None else stop + 1)
      if lengths[i] > 0:  # a later trace that runs to its end is exactly one that votes
        assert (stop is None) == kept[i]
    np.testing.assert_array_equal(r.kept, kept)
    np.testing.assert_array_equal(r.tokens, tokens)
    assert r.answer == ref_vote([a if k else None for a, k in zip(answers, kept)], lowest)


def test_simulate_online_rejects_bad_shapes():
  with pytest.raises(ValueError, match="lengths"):
    deepconf.simulate_online(np.zeros((2, 4)), [1, 5], ["A", "B"])
  with pytest.raises(ValueError, match="token_confs"):
    deepconf.simulate_online(np.zeros(4), [1], ["A"])
