"""DeepConf baselines (Fu et al. 2025, "Deep Think with Confidence"), replayed on drawn samples.

Token confidence is the sampler's `token_conf`: `-mean(top-k log-probs)` per step, higher =
more confident. Its trace aggregations follow the authors' code (facebookresearch/deepconf):
groups are sliding windows of `window` tokens, clipped to the trace length (a trace shorter
than one window is one group, its whole mean); the lowest group confidence is the smallest
window mean.

- Offline: keep the traces whose confidence (bottom-10% group or tail: `conf_bottom`,
  `conf_tail` of the sampler) is at least the `100 * (1 - eta)` percentile of all N traces
  (np.percentile, linear), then vote among the kept, weighted by that same confidence.
- Online: the first `warmup` traces run to the end; the threshold is the `100 * (1 - eta)`
  percentile of their lowest group confidences (eta 0.1 -> 90th, eta 0.9 -> 10th percentile).
  Every later trace stops at the first full window whose mean is below the threshold and is
  then left out of the vote. Warm-up traces vote only if their lowest group confidence reaches
  the threshold, weighted by it, as in the authors' `deepconf-online.py`.

Stopping early only truncates a trace, so replaying online DeepConf on full samples is exact:
same vote, and the tokens it would have consumed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from catts_jax.tts.voting import VoteTable, confidence_weighted

_Q_DIGITS = 9  # 100 * (1 - 0.9) is 9.999999999999998 in floats; the percentile means 10


def _check_keep(keep_fraction: float) -> float:
  if not 0 < keep_fraction <= 1:
    raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
  return round(100.0 * (1.0 - keep_fraction), _Q_DIGITS)


# --- trace confidences (numpy twins of catts_jax.scoring's) -----------------------------------


def window_means(token_conf, length: int, window: int) -> np.ndarray:
  """Means of every length-w window of the first `length` tokens, w = min(window, length),
  indexed by window start ([length - w + 1]); empty for an empty trace."""
  c = np.asarray(token_conf, np.float64)[:length]
  if length == 0:
    return np.zeros(0)
  w = min(window, length)
  sums = np.concatenate([[0.0], np.cumsum(c)])
  return (sums[w:] - sums[:-w]) / w


def lowest_group_confidence(token_conf, length: int, window: int) -> float:
  """DeepConf's lowest group confidence (the sampler's `conf_min_window`); 0.0 for an empty
  trace, the least possible token confidence, as in the authors' code."""
  means = window_means(token_conf, length, window)
  return float(means.min()) if means.size else 0.0


# --- offline ------------------------------------------------------------------------------


def deepconf_filter(confidences, keep_fraction: float) -> np.ndarray:
  """Mask of the traces kept: confidence >= np.percentile(confidences, 100 * (1 - eta)).
  Ties at the threshold are all kept; at least one trace always is."""
  c = np.asarray(confidences, np.float64).reshape(-1)
  q = _check_keep(keep_fraction)
  if c.size == 0:
    return np.zeros(0, bool)
  return c >= np.percentile(c, q)


def deepconf_vote(
  answers: Sequence[str | None],
  confidences,
  keep_fraction: float,
  table: VoteTable | None = None,
  source: str = "deepconf",
) -> VoteTable:
  """Offline DeepConf: filter by trace confidence (over all N traces, unanswered included),
  then a vote among the kept weighted by the same confidence."""
  c = np.asarray(confidences, np.float64).reshape(-1)
  keep = deepconf_filter(c, keep_fraction)
  kept = [a if k else None for a, k in zip(answers, keep)]
  return confidence_weighted(kept, np.where(keep, c, 0.0), table, source)


# --- online -------------------------------------------------------------------------------


def online_threshold(warmup_confs, keep_fraction: float) -> float:
  """The stopping threshold: np.percentile(lowest group confidences of the warm-up traces,
  100 * (1 - eta)); eta 0.1 -> 90th percentile (DeepConf-low), 0.9 -> 10th (DeepConf-high)."""
  c = np.asarray(warmup_confs, np.float64).reshape(-1)
  if c.size == 0:
    raise ValueError("online DeepConf needs at least one warm-up trace")
  return float(np.percentile(c, _check_keep(keep_fraction)))


def online_stop(token_conf, length: int, window: int, threshold: float) -> int | None:
  """Index of the token at which an online trace stops: the last token of the first full
  window whose mean is below `threshold`; None if it never stops.

  A trace shorter than one window has no full window while it runs; it is judged once, at
  its last token, by its whole mean (the authors' vote filter does the same), so it "stops"
  at length - 1 having consumed all its tokens. Hence, for a non-empty trace: stop is None
  iff `lowest_group_confidence(...) >= threshold`.
  """
  means = window_means(token_conf, length, window)
  below = np.flatnonzero(means < threshold)
  if below.size == 0:
    return None
  return int(below[0]) + min(window, length) - 1


@dataclasses.dataclass(frozen=True)
class OnlineResult:
  answer: str | None  # the vote's winner
  threshold: float  # from the warm-up traces
  kept: np.ndarray  # [n] bool: the trace voted
  stops: np.ndarray  # [n] int: where the stop rule fires (`online_stop`), -1 never; warm-up traces run on
  tokens: np.ndarray  # [n] int: tokens the trace consumed online
  lengths: np.ndarray  # [n] int: tokens of the full samples (what self-consistency spends)
  table: VoteTable

  @property
  def token_savings(self) -> float:
    """Fraction of the full samples' tokens that online DeepConf did not generate."""
    full = int(self.lengths.sum())
    return 1.0 - int(self.tokens.sum()) / full if full else 0.0


def simulate_online(
  token_confs,
  lengths,
  answers: Sequence[str | None],
  confidences=None,
  warmup: int = 16,
  keep_fraction: float = 0.9,
  window: int = 2048,
  source: str = "deepconf_online",
) -> OnlineResult:
  """Replay online DeepConf on n full samples drawn in order: token_confs [n, L] (padded past
  each length), lengths [n], answers [n]. Vote weights are `confidences` if given, else each
  trace's lowest group confidence (the authors' choice).

  The first min(warmup, n) samples are the warm-up traces; with n <= warmup every trace is
  one, nothing stops early, and the result is offline DeepConf on lowest group confidence.
  A later trace that stops is truncated: it consumed stop + 1 tokens and gives no answer.
  A trace votes iff its lowest group confidence reaches the threshold (an empty trace counts
  0.0 and never does); for non-empty later traces that is exactly "never stopped".
  """
  confs = np.asarray(token_confs, np.float64)
  lens = np.asarray(lengths, np.int64).reshape(-1)
  n = len(answers)
  if confs.ndim != 2 or confs.shape[0] != n or lens.shape[0] != n:
    raise ValueError(
      f"need token_confs [n, L] and lengths [n] for n={n} answers, got {confs.shape}, {lens.shape}"
    )
  if np.any(lens < 0) or np.any(lens > confs.shape[1]):
    raise ValueError(f"lengths must lie in [0, {confs.shape[1]}], got {lens}")
  if warmup < 1:
    raise ValueError(f"warmup must be >= 1, got {warmup}")
  lowest = np.array([lowest_group_confidence(confs[i], lens[i], window) for i in range(n)])
  n_warm = min(warmup, n)
  threshold = online_threshold(lowest[:n_warm], keep_fraction)
  stops = np.full(n, -1, np.int64)
  for i in range(n):
    stop = online_stop(confs[i], lens[i], window, threshold)
    stops[i] = -1 if stop is None else stop
  kept = lowest >= threshold  # the authors' vote filter; for later traces: never stopped
  tokens = np.where((np.arange(n) >= n_warm) & (stops >= 0), stops + 1, lens)
  weights = lowest if confidences is None else np.asarray(confidences, np.float64).reshape(-1)
  table = confidence_weighted(
    [a if k else None for a, k in zip(answers, kept)], np.where(kept, weights, 0.0), source=source
  )
  return OnlineResult(table.winner(), threshold, kept, stops, tokens, lens, table)
