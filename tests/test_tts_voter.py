"""The Expert as Voter: lenient parsing of probabilities, the prompt, unusable replies."""

import numpy as np
import pytest
from PIL import Image
from serving import Replies

from catts_jax.tts import expert as ex
from catts_jax.tts.voter import parse_votes, vote

IMAGE = Image.new("RGB", (40, 30), (200, 30, 30))

CANDIDATES = ["12", "15", "3/4"]
VOTES = [
  ('{"A1": 0.7, "A2": 0.2, "A3": 0.1}', [0.7, 0.2, 0.1]),
  ('```json\n{"A1": 0.5, "A2": 0.5}\n```', [0.5, 0.5, 0]),
  ("Reasoning first... so {'A1': 0.6, 'A3': 0.4,} done.", [0.6, 0, 0.4]),
  ('{"A1": "70%", "A2": "30%"}', [0.7, 0.3, 0]),
  ('{"A1": 7, "A2": 3}', [0.7, 0.3, 0]),  # renormalised
  ('{"12": 0.25, "3/4": 0.75}', [0.25, 0, 0.75]),  # by candidate text
  ('{"A1": 0.5, "A9": 0.3, "banana": 0.2, "A2": 0.5}', [0.5, 0.5, 0]),  # unknown keys dropped
  ('{"A1": -1, "A2": 1, "A3": "n/a"}', [0, 1, 0]),  # negatives and non-numbers dropped
  ("[0.1, 0.3, 0.6]", [0.1, 0.3, 0.6]),  # a list in label order
  ('[{"answer": "A2", "probability": 0.9}, {"label": "12", "p": "10%"}]', [0.1, 0.9, 0]),
  ('[["A1", 0.2], ["A3", 0.8]]', [0.2, 0, 0.8]),
  ('{"probabilities": {"A1": 0.4, "A2": 0.6}, "reasoning": "A2 fits"}', [0.4, 0.6, 0]),
  ("A1: 0.8\nA2: 0.15\nA3: 0.05", [0.8, 0.15, 0.05]),
  ("- **A1**: 60%\n- **A2**: 40%", [0.6, 0.4, 0]),
  ("A1 (12) - 0.9\nA2 (15) - 0.1", [0.9, 0.1, 0]),
  ("Probabilities: A1 = 0.3, A2 = 0.7", [0.3, 0.7, 0]),
  ("The probability that A3 is correct: 1.0", [0, 0, 1]),
  ('Example {"A1": 0.5}. Final: {"A2": 1}', [0, 1, 0]),  # the last JSON wins
  ('{"A1": 0.9, "A2": 0.1', [0.9, 0.1, 0]),  # truncated JSON, read as lines
  ('{"A1": {"probability": 0.2}, "A2": {"p": 0.8}}', [0.2, 0.8, 0]),
  ("A1: 12 is what the model says, wrongly\nA2: 0.9 (likely)\nA3: 0.1", [0, 0.9, 0.1]),
  # A candidate named twice (its label, then its text) keeps the later value: label floors
  # with the Expert's own answer last (the synthetic Expert's replies); no candidate: floors.
  ('{"A1": 0.05, "A2": 0.05, "A3": 0.05, "15": 0.9}', [0.05, 0.9, 0.05]),
  ('{"15": 0.9, "A2": 0.05, "A1": 0.05}', [0.5, 0.5, 0]),
  ('{"A1": 0.05, "A2": 0.05, "A3": 0.05, "7": 0.9}', [1 / 3, 1 / 3, 1 / 3]),
]
BAD_VOTES = ['{"A1": 0, "A2": 0}', "no idea", '{"A9": 1}', "", "[0.5, 0.5]", '{"A1": NaN}', "A1: 0%"]


@pytest.mark.parametrize("text,expected", VOTES)
def test_parse_votes(text, expected):
  probs = parse_votes(text, CANDIDATES)
  assert list(probs) == CANDIDATES
  assert np.allclose(list(probs.values()), expected) and abs(sum(probs.values()) - 1) < 1e-9


@pytest.mark.parametrize("text", BAD_VOTES)
def test_parse_votes_failures(text):
  assert parse_votes(text, CANDIDATES) is None


def test_parse_votes_letter_candidates():
  assert parse_votes('{"B": 0.8, "A": 0.2}', ["A", "B"]) == {"A": 0.2, "B": 0.8}
  assert parse_votes('{"A2": 1}', ["A", "B"]) == {"A": 0.0, "B": 1.0}


def test_vote_role():
  expert = Replies('{"A2": 0.75, "A1": 0.25}')
  probs, call = vote(expert, "How many?", [IMAGE], ["12", "15", "12"])
  assert probs == {"12": 0.25, "15": 0.75} and call.ok and call.role == "voter"
  prompt = expert.sent[0][1]["content"][-1]["text"]
  assert "A1: 12\nA2: 15" in prompt and "How many?" in prompt
  assert expert.sent[0][1]["content"][0]["type"] == "image_url"
  assert expert.options == [(512, 0.0)]  # (max_tokens, temperature): the defaults, in that order
  with pytest.raises(ValueError):
    vote(expert, "q", [], [])


def test_vote_role_unparseable_is_an_expert_error():
  # The secret straddles the excerpt's end: redacted before the cut, no part of it remains.
  expert = Replies("x" * 295 + "secret-ish text", secrets=["secret-ish"])
  with pytest.raises(ex.ExpertError) as info:
    vote(expert, "q", [IMAGE], CANDIDATES)
  record = info.value.record
  assert (record.ok, record.attempts, record.role) == (False, 1, "voter")
  assert "unparseable" in record.error and len(record.output) == ex.OUTPUT_MAX_CHARS
  assert "secr" not in record.output and expert.last_call is record
