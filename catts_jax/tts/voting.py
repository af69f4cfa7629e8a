"""CA-TTS decision logic: the shared vote table V_final and the rules that write into it.

Every module adds weighted entries for canonical answer strings (`catts_jax.eval.answers`):

  table = confidence_weighted(answers, confidences)   # Self-Consistency, weight = confidence
  voter_boost(table, expert_probs, total=0.5 * N)      # Expert as Voter, tau * N * p(answer)
  if needs_reflection(table, 0.8, answers=answers, confidences=confidences):
    reflection_boost(table, new_answer, total=0.5 * N) # Self-Reflection, 0.5 * N
  if needs_selfcheck(table, margin_threshold=1.0):
    selfcheck_boost(table, cands, selfcheck_support(conf_orig, conf_noisy), total=0.5 * N)
  table.winner()

N is the number of Self-Consistency samples, unanswered ones included. A sample whose answer
could not be extracted ("" or None) never gets weight: it is logged, but it never wins. Boosts
are sized against N, so Self-Consistency weights should lie in (0, 1] (exp(-NMLP) does): then
the sampled votes hold at most N in all and a boost of tau * N means "worth tau of the samples".

The paper gives no thresholds for its gates; ours are in `TTSConfig`, each rule documented where
it is defined.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

SIGNALS = ("confidence", "posterior", "margin")
# Per-sample scores a vote can weigh by (scoring.response_scores): "confidence" exp(-NMLP), the
# paper's text; "conf_mean" the mean top-k token confidence, as the release votes; DeepConf's
# "conf_bottom" (bottom-10% group mean) and "conf_tail" (the last tokens' mean).
VOTE_WEIGHTS = ("confidence", "conf_mean", "conf_bottom", "conf_tail")
_TIE_DIGITS = 9  # totals equal to 9 decimals tie: 0.1 + 0.2 and 0.3 are the same vote


@dataclasses.dataclass(frozen=True)
class TTSConfig:
  """Defaults for every weight and threshold of CA-TTS and its baselines (configs/catts.py)."""

  sc_confidence: str = "confidence"  # the vote weight, one of VOTE_WEIGHTS (the paper's exp(-NMLP))
  tau: float = 0.5  # Expert as Voter: total boost tau * N, split by the Expert's probabilities
  reflection_boost: float = 0.5  # the re-answer gets reflection_boost * N
  reflection_signal: str = "confidence"  # one of SIGNALS; see `reflection_signal`
  reflection_threshold: float = 0.8  # reflect when the signal is below this (untuned)
  selfcheck_weight: float = 0.5  # self-check boost: at most selfcheck_weight * N in all
  selfcheck_margin: float = 1.0  # self-check only when the posterior margin is below this
  deepconf_confidence: str = "conf_bottom"  # sampler score for offline DeepConf (or conf_tail)
  deepconf_keep: float = 0.9  # eta: keep the top 90% (DeepConf-high) or 0.1 (DeepConf-low)
  deepconf_window: int = 2048  # group (sliding window) size in tokens
  deepconf_warmup: int = 16  # online DeepConf warm-up traces
  # How big a boost of fraction f is (`boost_total`): f * N in samples ("samples", the paper and
  # the release) or in mean vote weights ("mean_weight", ours), N every sample. The Voter's
  # tau * N alone may count the answered samples only and round down, as the release's
  # int(tau * N) does (its reflection and self-check boosts are 0.5 * N, neither).
  boost_unit: str = "samples"
  voter_count: str = "all"  # "all" (the paper's text) or "answered" (the release)
  voter_round: bool = False  # True: rounded down (the release)
  # False: Self-Reflection and the Visual Self-Check run whatever the table says, as in the
  # release; True: only below their thresholds (the paper's "low-confidence answer").
  gated: bool = True
  adaptive: bool = False  # sample in rounds and stop early (`should_stop`)
  adaptive_margin: float = 0.6  # stop once the posterior margin reaches this (untuned)
  adaptive_min_samples: int = 8  # never stop before this many samples

  def __post_init__(self):
    if self.reflection_signal not in SIGNALS:
      raise ValueError(f"reflection_signal must be one of {SIGNALS}, got {self.reflection_signal!r}")
    if not 0 < self.deepconf_keep <= 1:
      raise ValueError(f"deepconf_keep must be in (0, 1], got {self.deepconf_keep}")
    for name in ("sc_confidence", "deepconf_confidence"):
      if getattr(self, name) not in VOTE_WEIGHTS:
        raise ValueError(f"{name} must be one of {VOTE_WEIGHTS}, got {getattr(self, name)!r}")
    if self.voter_count not in ("all", "answered"):
      raise ValueError(f"voter_count must be 'all' or 'answered', got {self.voter_count!r}")
    if self.boost_unit not in ("samples", "mean_weight"):
      raise ValueError(f"boost_unit must be 'samples' or 'mean_weight', got {self.boost_unit!r}")
    if self.deepconf_window < 1 or self.deepconf_warmup < 1:
      raise ValueError("deepconf_window and deepconf_warmup must be >= 1")


# --- the shared vote table ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Vote:
  source: str  # "sc", "voter", "reflection", "selfcheck", "deepconf", ...
  answer: str  # "" when no answer could be extracted
  weight: float


def answered(answer: str | None) -> bool:
  return bool(answer)


class VoteTable:
  """Weighted votes per answer, in the order answers were first added.

  Weights may be negative (penalties). `winner` is the answer with the highest total; ties
  (equal to 9 decimals) go to the answer added first, as `collections.Counter.most_common`
  does. Entries with no answer are kept for the log and never counted.
  """

  def __init__(self):
    self._entries: list[Vote] = []
    self._totals: dict[str, float] = {}  # insertion order = first added

  def add(self, source: str, answer: str | None, weight: float) -> None:
    weight = float(weight)
    if not math.isfinite(weight):
      raise ValueError(f"vote weight must be finite, got {weight} for {answer!r} from {source!r}")
    answer = answer or ""
    self._entries.append(Vote(source, answer, weight))
    if answered(answer):
      self._totals[answer] = self._totals.get(answer, 0.0) + weight

  @property
  def entries(self) -> tuple[Vote, ...]:
    return tuple(self._entries)

  def weights(self) -> dict[str, float]:
    return dict(self._totals)

  def ranked(self) -> list[tuple[str, float]]:
    """(answer, total), best first; a stable sort keeps ties in first-added order."""
    return sorted(self._totals.items(), key=lambda kv: -round(kv[1], _TIE_DIGITS))

  def winner(self) -> str | None:
    ranked = self.ranked()
    return ranked[0][0] if ranked else None

  def posterior(self) -> dict[str, float]:
    """Totals clipped at 0 and normalised: p(a) = max(w_a, 0) / sum_b max(w_b, 0).

    An answer pushed to or below zero has no support left. When no answer has positive support
    the table knows nothing: the posterior is uniform over the answers (margin 0 with two or
    more). Empty table: {}.
    """
    if not self._totals:
      return {}
    support = {a: max(w, 0.0) for a, w in self._totals.items()}
    total = sum(support.values())
    if total <= 0:
      return {a: 1.0 / len(support) for a in support}
    return {a: s / total for a, s in support.items()}

  def margin(self) -> float:
    """Top-1 minus top-2 posterior; 1.0 with a single answer, 0.0 when empty."""
    p = sorted(self.posterior().values(), reverse=True)
    if not p:
      return 0.0
    return p[0] - (p[1] if len(p) > 1 else 0.0)

  def copy(self) -> VoteTable:
    return VoteTable.from_json(self.to_json())

  def to_json(self) -> dict:
    """A JSON-ready record for results.jsonl; `from_json` rebuilds the table from it."""
    return {
      "entries": [dataclasses.asdict(e) for e in self._entries],
      "totals": self.weights(),
      "posterior": self.posterior(),
      "winner": self.winner(),
      "margin": self.margin(),
    }

  @classmethod
  def from_json(cls, record: Mapping) -> VoteTable:
    table = cls()
    for e in record["entries"]:
      table.add(e["source"], e["answer"], e["weight"])
    return table


# --- Self-Consistency -----------------------------------------------------------------------


def _weights(confidences, n: int) -> np.ndarray:
  c = np.asarray(confidences, np.float64).reshape(-1)
  if c.shape[0] != n:
    raise ValueError(f"{n} answers but {c.shape[0]} confidences")
  if not np.all(np.isfinite(c)) or np.any(c < 0):
    raise ValueError(f"confidences must be finite and >= 0, got {c}")
  return c


def confidence_weighted(
  answers: Sequence[str | None], confidences, table: VoteTable | None = None, source: str = "sc"
) -> VoteTable:
  """Each sample votes for its answer with weight = its confidence (which one is the caller's
  choice, `TTSConfig.sc_confidence`)."""
  table = VoteTable() if table is None else table
  for a, c in zip(answers, _weights(confidences, len(answers))):
    table.add(source, a, c)
  return table


def majority(answers: Sequence[str | None], table: VoteTable | None = None, source: str = "sc") -> VoteTable:
  """Plain self-consistency: one vote per sample."""
  return confidence_weighted(answers, np.ones(len(answers)), table, source)


def best_of_n(answers: Sequence[str | None], confidences) -> str | None:
  """The answer of the most confident sample that has one (first such sample on ties)."""
  c = _weights(confidences, len(answers))
  best = None
  for i, a in enumerate(answers):
    if answered(a) and (best is None or c[i] > c[best]):
      best = i
  return None if best is None else answers[best]


# --- Expert as Voter --------------------------------------------------------------------------


def _split(
  table: VoteTable, source: str, scores: Mapping[str, float], total: float, floor: float = 0.0
) -> dict[str, float]:
  """Adds `total * s_a / max(sum(s), floor)` to each answer already in the table (s clipped
  at 0); answers the table does not hold are ignored. Nothing is added when no known answer
  has s > 0."""
  known = table.weights()
  s = {}
  for a, v in scores.items():
    v = float(v)
    if not math.isfinite(v):
      raise ValueError(f"non-finite score {v} for {a!r} from {source!r}")
    if answered(a) and a in known and v > 0:
      s[a] = v
  mass = sum(s.values())
  if mass <= 0:
    return {}
  added = {a: total * v / max(mass, floor) for a, v in s.items()}
  for a, w in added.items():
    table.add(source, a, w)
  return added


def boost_total(
  fraction: float, answers: Sequence[str | None], weights, tts: TTSConfig, *, voter: bool = False
) -> float:
  """A module's whole boost, `fraction` of N: in samples (`boost_unit="samples"`, the paper and
  the release) or in sample weights (`"mean_weight"`: N times the mean vote weight, so a boost
  weighs the same against the samples whatever their weight's scale). N is every sample, except
  that the Voter's (`voter=True`) counts the answered ones with `voter_count="answered"` and is
  rounded down with `voter_round` (the release's int(tau * N))."""
  w = _weights(weights, len(answers))
  every = not voter or tts.voter_count == "all"
  counted = [x for a, x in zip(answers, w) if every or answered(a)]
  unit = float(sum(counted)) if tts.boost_unit == "mean_weight" else float(len(counted))
  total = fraction * unit
  return float(math.floor(total + 1e-9)) if voter and tts.voter_round else total


def voter_boost(
  table: VoteTable, probs: Mapping[str, float] | None, total: float, source: str = "voter"
) -> dict[str, float]:
  """Expert as Voter: adds `total * p(a)` to each candidate a (the paper: total = tau * N,
  `boost_total`), with the Expert's
  probabilities renormalised over the candidates in the table (unknown answers, empty answers
  and negative probabilities dropped). Returns what was added; {} if the Expert gave no
  candidate positive probability or no answer at all (probs None: its reply did not parse)."""
  return _split(table, source, probs or {}, total)


# --- Self-Reflection ----------------------------------------------------------------------


def reflection_signal(
  table: VoteTable, signal: str = "confidence", answers: Sequence[str | None] | None = None, confidences=None
) -> float:
  """How sure the table is of its winner, by one of three readings:

  - "confidence": mean confidence of the samples (answers, confidences) that voted for the
    winner: the paper's "low-confidence answer", and the only one that works at N = 1;
  - "posterior": the winner's posterior share of the vote;
  - "margin": top-1 minus top-2 posterior.
  An empty table (no answer at all) reads 0.0, as does a winner no sample voted for.
  """
  if signal not in SIGNALS:
    raise ValueError(f"unknown reflection signal {signal!r}; known: {SIGNALS}")
  winner = table.winner()
  if winner is None:
    return 0.0
  if signal == "posterior":
    return table.posterior()[winner]
  if signal == "margin":
    return table.margin()
  if answers is None or confidences is None:
    raise ValueError('signal "confidence" needs the samples\' answers and confidences')
  c = _weights(confidences, len(answers))
  mine = [c[i] for i, a in enumerate(answers) if a == winner]
  return float(np.mean(mine)) if mine else 0.0


def needs_reflection(
  table: VoteTable,
  threshold: float,
  signal: str = "confidence",
  answers: Sequence[str | None] | None = None,
  confidences=None,
) -> bool:
  """Reflect when `reflection_signal(...) < threshold` (strictly below)."""
  return reflection_signal(table, signal, answers, confidences) < threshold


def reflection_boost(table: VoteTable, answer: str | None, total: float, source: str = "reflection") -> float:
  """Adds `total` (the paper: 0.5 * N) to the re-answer (a new answer joins the table); an
  unextractable re-answer adds nothing. Returns the weight added."""
  if not answered(answer):
    return 0.0
  table.add(source, answer, total)
  return total


# --- Visual Self-Check --------------------------------------------------------------------


def selfcheck_support(conf_orig, conf_noisy) -> np.ndarray:
  """Per-candidate support drop `max(conf_orig - conf_noisy, 0)`.

  Inputs are the same per-candidate score under the original and the perturbed image: mean
  teacher-forced log-prob of the answer text (the drop is then a log-ratio) or a confidence in
  (0, 1]. An answer that truly depends on the image loses support under noise; one that gains
  support shows no dependence and gets 0, not a penalty.
  """
  o, z = np.asarray(conf_orig, np.float64), np.asarray(conf_noisy, np.float64)
  if o.shape != z.shape:
    raise ValueError(f"shapes differ: {o.shape} vs {z.shape}")
  if not (np.all(np.isfinite(o)) and np.all(np.isfinite(z))):
    raise ValueError("self-check scores must be finite")
  return np.maximum(o - z, 0.0)


def selfcheck_boost(
  table: VoteTable,
  answers: Sequence[str],
  drops,
  total: float,
  source: str = "selfcheck",
) -> dict[str, float]:
  """Adds `total * drop_a / max(1, sum_b drop_b)` to each candidate a in the table (the
  paper's scale: total = 0.5 * N): an answer gets votes in proportion to the support it loses
  under noise (all of it, with confidences in (0, 1]: `total`), and the whole self-check is
  worth at most `total`.
  Drops of a few thousandths thus add a few thousandths of `weight * n`, not a share of it
  (a plain split would give noise-sized differences full weight). Candidates not in the table
  are ignored and the sum runs over the rest. Returns what was added."""
  d = np.asarray(drops, np.float64).reshape(-1)
  if d.shape[0] != len(answers):
    raise ValueError(f"{len(answers)} candidates but {d.shape[0]} drops")
  if len(set(answers)) != len(answers):
    raise ValueError(f"candidate answers must be unique, got {list(answers)}")
  return _split(table, source, dict(zip(answers, d.tolist())), total, floor=1.0)


def needs_selfcheck(table: VoteTable, margin_threshold: float) -> bool:
  """Self-check only a contested table: posterior margin strictly below the threshold (1.0
  skips only unanimous tables, where re-ranking cannot change the winner)."""
  return table.margin() < margin_threshold


# --- adaptive compute -------------------------------------------------------------------------


def should_stop(table: VoteTable, margin_threshold: float, min_samples: int, n_so_far: int) -> bool:
  """Stop sampling a problem once at least `min_samples` are drawn and the vote posterior
  margin is at least `margin_threshold` (a threshold above 1 never stops)."""
  return n_so_far >= min_samples and table.margin() >= margin_threshold
