"""CA-TTS vote table, voting rules, boosts and gates on hand-made candidate sets."""

from __future__ import annotations

import collections
import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from catts_jax.tts import voting
from catts_jax.tts.voting import VoteTable


def table_of(*items) -> VoteTable:
  t = VoteTable()
  for answer, weight in items:
    t.add("sc", answer, weight)
  return t


# --- the table --------------------------------------------------------------------------------


def test_unanswered_samples_are_logged_but_never_counted():
  t = voting.majority(["A", None, "B", "", "A"])
  assert t.weights() == {"A": 2.0, "B": 1.0}
  assert len(t.entries) == 5 and [e.answer for e in t.entries] == ["A", "", "B", "", "A"]
  assert t.winner() == "A"
  assert voting.majority([None, ""]).winner() is None


@pytest.mark.parametrize(
  "answers",
  [["B", "A", "A", "B"], ["A", "B", "B", "A"], ["C", "A", "B", "A", "B", "C"], ["X"], list("QRSTQRST")],
)
def test_majority_tie_break_is_first_added_like_counter(answers):
  assert voting.majority(answers).winner() == collections.Counter(answers).most_common(1)[0][0]
  assert voting.majority(answers).winner() == answers[0]  # every case above is a full tie


def test_float_near_ties_break_by_first_added():
  # 0.1 + 0.2 != 0.3 in floats; as votes they are equal, so the first-added answer wins.
  assert voting.confidence_weighted(["A", "A", "B"], [0.1, 0.2, 0.3]).winner() == "A"
  assert voting.confidence_weighted(["B", "A", "A"], [0.3, 0.1, 0.2]).winner() == "B"
  assert voting.confidence_weighted(["B", "A", "A"], [0.3, 0.1, 0.2 + 1e-6]).winner() == "A"


def test_ranked_orders_by_total_then_first_added():
  t = table_of(("A", 1.0), ("B", 3.0), ("C", 1.0), ("D", 2.0))
  assert t.ranked() == [("B", 3.0), ("D", 2.0), ("A", 1.0), ("C", 1.0)]


def test_negative_weights_can_change_the_winner():
  t = table_of(("A", 1.0), ("A", 1.0), ("B", 1.5))
  assert t.winner() == "A"
  t.add("selfcheck", "A", -1.0)
  assert t.weights() == {"A": 1.0, "B": 1.5} and t.winner() == "B"


def test_posterior_and_margin():
  t = table_of(("A", 3.0), ("B", 1.0))
  assert t.posterior() == {"A": 0.75, "B": 0.25} and t.margin() == 0.5
  one = table_of(("A", 0.2))
  assert one.posterior() == {"A": 1.0} and one.margin() == 1.0
  empty = VoteTable()
  assert empty.posterior() == {} and empty.margin() == 0.0 and empty.winner() is None


def test_posterior_clips_negative_totals_and_is_uniform_without_support():
  t = table_of(("A", 2.0), ("B", -1.0), ("C", 2.0))
  assert t.posterior() == {"A": 0.5, "B": 0.0, "C": 0.5} and t.margin() == 0.0
  t = table_of(("A", -2.0), ("B", 0.0), ("C", -0.5), ("D", 0.0))
  assert t.posterior() == {a: 0.25 for a in "ABCD"} and t.margin() == 0.0
  assert t.winner() == "B"  # still the highest total, first added among the zeros
  assert table_of(("A", -1.0)).margin() == 1.0


def test_json_round_trip():
  t = voting.confidence_weighted(["A", None, "B"], [0.5, 0.25, 0.75])
  voting.voter_boost(t, {"A": 1.0}, total=1.5)
  t.add("selfcheck", "B", -0.5)
  record = json.loads(json.dumps(t.to_json()))
  assert record["totals"] == {"A": 2.0, "B": 0.25}
  assert record["winner"] == "A" and record["margin"] == pytest.approx((2.0 - 0.25) / 2.25)
  assert [e["source"] for e in record["entries"]] == ["sc", "sc", "sc", "voter", "selfcheck"]
  back = VoteTable.from_json(record)
  assert back.entries == t.entries and back.to_json() == t.to_json()
  c = t.copy()
  c.add("sc", "C", 9.0)
  assert t.winner() == "A" and c.winner() == "C"


def test_add_rejects_non_finite_weights():
  with pytest.raises(ValueError, match="finite"):
    VoteTable().add("sc", "A", float("nan"))


# --- Self-Consistency rules ---------------------------------------------------------------


def test_confidence_weighting_beats_majority_when_confidence_disagrees():
  answers, conf = ["A", "B", "B"], [0.9, 0.4, 0.4]
  assert voting.majority(answers).winner() == "B"
  t = voting.confidence_weighted(answers, conf)
  assert t.weights() == pytest.approx({"A": 0.9, "B": 0.8}) and t.winner() == "A"


def test_confidence_weighted_writes_into_a_given_table():
  t = table_of(("B", 1.0))
  assert voting.confidence_weighted(["A"], [0.5], table=t) is t
  assert t.weights() == {"B": 1.0, "A": 0.5}


@pytest.mark.parametrize("bad", [[0.5, -0.1], [0.5, np.nan], [0.5]])
def test_confidence_weighted_rejects_bad_confidences(bad):
  with pytest.raises(ValueError):
    voting.confidence_weighted(["A", "B"], bad)


def test_best_of_n():
  assert voting.best_of_n(["A", "B", "C"], [0.2, 0.9, 0.5]) == "B"
  assert voting.best_of_n(["A", None, "C"], [0.2, 0.99, 0.5]) == "C"  # unanswered never wins
  assert voting.best_of_n(["A", "B", "C"], [0.7, 0.7, 0.1]) == "A"  # first on ties
  assert voting.best_of_n([None, ""], [0.7, 0.7]) is None


# --- Expert as Voter ----------------------------------------------------------------------


def test_voter_boost_flips_the_winner_by_hand_totals():
  t = voting.confidence_weighted(["A", "A", "B", "B", "B"], [0.9, 0.9, 0.7, 0.7, 0.7])
  assert t.winner() == "B"  # A 1.8 < B 2.1
  # Unknown "Z" is dropped: A 0.6 / 0.8 = 0.75, B 0.25; tau * N = 2.5.
  added = voting.voter_boost(t, {"A": 0.6, "B": 0.2, "Z": 0.2}, total=2.5)
  assert added == pytest.approx({"A": 1.875, "B": 0.625})
  assert t.weights() == pytest.approx({"A": 3.675, "B": 2.725}) and t.winner() == "A"


def test_voter_boost_even_split_keeps_the_winner():
  t = voting.confidence_weighted(["A", "A", "B", "B", "B"], [0.9, 0.9, 0.7, 0.7, 0.7])
  voting.voter_boost(t, {"A": 3.0, "B": 3.0}, total=2.5)  # renormalised to 0.5 / 0.5
  assert t.weights() == pytest.approx({"A": 3.05, "B": 3.35}) and t.winner() == "B"


def test_voter_boost_adds_nothing_without_usable_probabilities():
  t = table_of(("A", 1.0))
  assert voting.voter_boost(t, {"Z": 1.0, "": 1.0}, total=2) == {}
  assert voting.voter_boost(t, {"A": 0.0}, total=2) == {}
  assert voting.voter_boost(t, {"A": -1.0, "Z": 1.0}, total=2) == {}
  assert voting.voter_boost(t, None, total=2) == {}  # the Expert's reply did not parse
  assert t.weights() == {"A": 1.0} and len(t.entries) == 1
  with pytest.raises(ValueError):
    voting.voter_boost(t, {"A": float("nan")}, total=2)


# --- Self-Reflection ----------------------------------------------------------------------


def test_reflection_gate_on_winner_confidence_both_sides():
  answers, conf = ["A", "A", "B"], [0.5, 0.75, 1.0]  # A wins 1.25 to 1.0; its mean conf 0.625
  t = voting.confidence_weighted(answers, conf)
  assert voting.reflection_signal(t, "confidence", answers, conf) == 0.625
  assert voting.needs_reflection(t, 0.7, answers=answers, confidences=conf)
  assert not voting.needs_reflection(t, 0.6, answers=answers, confidences=conf)
  assert not voting.needs_reflection(t, 0.625, answers=answers, confidences=conf)  # strictly below
  with pytest.raises(ValueError, match="answers"):
    voting.needs_reflection(t, 0.7)


def test_reflection_gate_on_posterior_and_margin():
  t = table_of(("A", 3.0), ("B", 1.0))  # posterior 0.75, margin 0.5
  assert voting.needs_reflection(t, 0.8, signal="posterior")
  assert not voting.needs_reflection(t, 0.7, signal="posterior")
  assert voting.needs_reflection(t, 0.6, signal="margin")
  assert not voting.needs_reflection(t, 0.4, signal="margin")
  assert voting.needs_reflection(VoteTable(), 0.1, signal="posterior")  # no answer at all
  with pytest.raises(ValueError, match="signal"):
    voting.needs_reflection(t, 0.5, signal="entropy")


def test_reflection_boost_changes_the_winner_exactly_when_it_exceeds_the_gap():
  t = voting.majority(["A", "A", "A", "B", "B"])  # A 3, B 2, N = 5
  assert voting.reflection_boost(t, "B", total=2.5) == 2.5
  assert t.weights() == {"A": 3.0, "B": 4.5} and t.winner() == "B"
  t = voting.majority(["A", "A", "A", "B", "B"])
  voting.reflection_boost(t, "C", total=2.5)  # a new answer: 2.5 < 3
  assert t.weights() == {"A": 3.0, "B": 2.0, "C": 2.5} and t.winner() == "A"
  voting.reflection_boost(t, "C", total=0.5)  # 3.0 ties A: A was added first
  assert t.winner() == "A"
  assert (
    voting.reflection_boost(t, None, total=2.5) == 0.0 and voting.reflection_boost(t, "", total=2.5) == 0.0
  )


# --- Visual Self-Check ----------------------------------------------------------------------


def test_selfcheck_support_is_the_clipped_drop():
  orig, noisy = np.array([-0.2, -1.0, -0.5]), np.array([-0.9, -0.4, -0.5])
  np.testing.assert_allclose(voting.selfcheck_support(orig, noisy), [0.7, 0.0, 0.0])
  with pytest.raises(ValueError):
    voting.selfcheck_support([1.0], [1.0, 2.0])


def test_selfcheck_boost_by_hand_totals():
  t = table_of(("A", 2.0), ("B", 1.8))  # N = 4, weight 0.5: the self-check is worth <= 2 votes
  # The drops sum to 0.4 < 1: each answer gets 2 * its drop, 0.8 votes in all.
  added = voting.selfcheck_boost(t, ["A", "B"], [0.1, 0.3], total=2.0)
  assert added == pytest.approx({"A": 0.2, "B": 0.6})
  assert t.weights() == pytest.approx({"A": 2.2, "B": 2.4}) and t.winner() == "B"
  # The drops sum to 1.5 > 1: the 2 votes are split 0.9 : 0.6.
  t = table_of(("A", 2.0), ("B", 1.8))
  assert voting.selfcheck_boost(t, ["A", "B"], [0.9, 0.6], total=2.0) == pytest.approx({"A": 1.2, "B": 0.8})


def test_selfcheck_boost_of_noise_sized_drops_is_noise_sized():
  t = table_of(("A", 2.0), ("B", 1.8))
  added = voting.selfcheck_boost(t, ["A", "B"], [0.001, 0.004], total=2.0)
  assert added == pytest.approx({"A": 0.002, "B": 0.008}) and t.winner() == "A"


def test_selfcheck_boost_ignores_unknown_candidates_and_zero_drops():
  t = table_of(("A", 2.0), ("B", 1.8))
  # "C" is not in the table: its drop counts for nothing; B gets 2 * 0.3 and overtakes A.
  assert voting.selfcheck_boost(t, ["A", "B", "C"], [0.0, 0.3, 0.9], total=2.0) == pytest.approx({"B": 0.6})
  assert t.winner() == "B"
  t = table_of(("A", 2.0), ("B", 1.8))
  assert voting.selfcheck_boost(t, ["A", "B"], [0.0, 0.0], total=2.0) == {}
  assert t.winner() == "A" and len(t.entries) == 2
  with pytest.raises(ValueError, match="unique"):
    voting.selfcheck_boost(t, ["A", "A"], [0.1, 0.2], total=2.0)


def test_selfcheck_gate_both_sides():
  contested = table_of(("A", 3.0), ("B", 1.0))  # margin 0.5
  assert voting.needs_selfcheck(contested, 0.6) and not voting.needs_selfcheck(contested, 0.5)
  unanimous = table_of(("A", 3.0))
  assert not voting.needs_selfcheck(unanimous, 1.0) and voting.needs_selfcheck(contested, 1.0)


# --- adaptive compute -------------------------------------------------------------------------


def test_should_stop():
  t = voting.majority(["A", "A", "A", "B"])  # posterior 0.75 / 0.25, margin 0.5
  assert voting.should_stop(t, 0.5, min_samples=4, n_so_far=4)
  assert not voting.should_stop(t, 0.5, min_samples=5, n_so_far=4)
  assert not voting.should_stop(t, 0.6, min_samples=4, n_so_far=4)
  assert not voting.should_stop(VoteTable(), 0.0 + 1e-9, min_samples=0, n_so_far=8)
  assert not voting.should_stop(voting.majority(["A"] * 8), 1.01, min_samples=1, n_so_far=8)


def test_adaptive_rounds_stop_when_the_vote_settles():
  rounds = [["A", "B"], ["A", "A"], ["A", "A"], ["B", "A"]]
  t, n = VoteTable(), 0
  for r in rounds:
    voting.majority(r, table=t)
    n += len(r)
    if voting.should_stop(t, margin_threshold=0.6, min_samples=4, n_so_far=n):
      break
  assert n == 6 and t.weights() == {"A": 5.0, "B": 1.0}  # after 4: 0.75 - 0.25 < 0.6


# --- config -------------------------------------------------------------------------------


def test_config_defaults_and_ml_collections_round_trip():
  cfg = voting.TTSConfig()
  assert (cfg.tau, cfg.reflection_boost, cfg.deepconf_keep, cfg.deepconf_window, cfg.deepconf_warmup) == (
    0.5,
    0.5,
    0.9,
    2048,
    16,
  )
  assert cfg.reflection_signal in voting.SIGNALS
  cd = ml_collections.ConfigDict(dataclasses.asdict(cfg))
  cd.tau = 0.25
  assert voting.TTSConfig(**cd.to_dict()) == dataclasses.replace(cfg, tau=0.25)
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.tau = 1.0  # type: ignore[misc]
  for bad in (dict(reflection_signal="entropy"), dict(deepconf_keep=0.0), dict(deepconf_warmup=0)):
    with pytest.raises(ValueError):
      voting.TTSConfig(**bad)


@pytest.mark.parametrize(
  "settings, voter, total",
  [
    ({}, True, 0.5 * 5),  # the paper: tau * N, every sample counted
    ({"voter_count": "answered"}, True, 0.5 * 4),  # the release's Voter counts answered samples only
    ({"voter_round": True}, True, 2.0),  # int(0.5 * 5)
    ({"voter_count": "answered", "voter_round": True}, True, 2.0),
    ({"boost_unit": "mean_weight"}, True, 0.5 * (0.9 + 0.5 + 0.2 + 0.4 + 0.1)),  # N x mean weight
    ({"boost_unit": "mean_weight", "voter_count": "answered"}, True, 0.5 * (0.9 + 0.5 + 0.4 + 0.1)),
    # Reflection and self-check boosts: 0.5 * N of every sample, unrounded, in the release too.
    ({"voter_count": "answered", "voter_round": True}, False, 0.5 * 5),
    ({"boost_unit": "mean_weight", "voter_count": "answered"}, False, 0.5 * (0.9 + 0.5 + 0.2 + 0.4 + 0.1)),
  ],
)
def test_boost_total_by_hand(settings, voter, total):
  answers, weights = ["3", "4", "", "3", "5"], [0.9, 0.5, 0.2, 0.4, 0.1]
  tts = voting.TTSConfig(**settings)
  assert voting.boost_total(0.5, answers, weights, tts, voter=voter) == pytest.approx(total)


def test_boost_settings_are_checked():
  for bad in (
    {"voter_count": "some"},
    {"boost_unit": "votes"},
    {"sc_confidence": "nmlp"},
    {"deepconf_confidence": "x"},
  ):
    with pytest.raises(ValueError, match=next(iter(bad))):
      voting.TTSConfig(**bad)
