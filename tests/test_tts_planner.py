"""The Expert as Planner: lenient parsing of module orders, fallback records, the prompt."""

import pytest
from PIL import Image
from serving import Replies

from catts_jax.tts import expert as ex
from catts_jax.tts.planner import DEFAULT_ORDER, candidate_summary, module_name, parse_order, plan

SC, SR, SCK = DEFAULT_ORDER

ORDERS = [
  ('{"order": ["self_consistency", "self_reflection", "visual_self_check"]}', [SC, SR, SCK]),
  ('{"order": ["SC", "SR"]}', [SC, SR]),
  ('```json\n{"order": ["SCk", "SC"]}\n```', [SCK, SC]),
  ("Sure! Here is my plan: {'order': ['SR', 'self-check']} Hope it helps.", [SR, SCK]),
  ("{order: [SC, SCk]}", [SC, SCK]),  # bare words
  ('{"order": ["SC", "sc", "Self-Consistency", "SR"]}', [SC, SR]),  # duplicates removed
  ('{"Order": ["Visual Self-Check", "Self Reflection"]}', [SCK, SR]),
  ('{"modules": ["self_consistency"]}', [SC]),
  ('{"plan": "SR then SC"}', [SR, SC]),
  ('{"order": "SC -> SCk"}', [SC, SCK]),
  ('{"reasoning": "the image is blurry", "steps": ["vcd", "SC"]}', [SCK, SC]),
  ('{"anything": ["SR"]}', [SR]),  # the only list in the object
  ('[{"module": "SC"}, {"name": "SR"}]', [SC, SR]),
  ('["Self-Consistency (SC)", "(SR)"]', [SC, SR]),
  ('["1. SC", "2) SCk"]', [SC, SCK]),
  ("SC -> SR -> SCk", [SC, SR, SCK]),
  ("Order: SR, SC", [SR, SC]),
  ("I would start with self-check.\nSCk \u2192 SC", [SCK, SC]),
  ("1. SC\n2. SR", [SC, SR]),
  ('Format: {"order": [...]}. My answer: {"order": ["SR"]}', [SR]),  # the last JSON wins
  ('{"order": ["SR", "SC"],}', [SR, SC]),  # trailing comma
]


@pytest.mark.parametrize("text,expected", ORDERS)
def test_parse_order(text, expected):
  order, note = parse_order(text)
  assert order == expected and note is None


def test_unknown_modules_are_dropped_with_a_note():
  order, note = parse_order('{"order": ["majority_vote", "zoom_in", "SR"]}')
  assert order == [SC, SR] and note == "dropped unknown modules: zoom_in"


FAILURES = [
  ("", "no module order found in the reply"),
  ("I think SC might help here.", "no module order found in the reply"),
  ('{"order": []}', "empty module order"),
  ('{"order": ["zoom", "crop"]}', "no known module in ['zoom', 'crop']"),
  ('{"order": ["SC", "SR"', "no module order found in the reply"),  # cut off
  ("}{ ][ garbage {", "no module order found in the reply"),
  ('{"a": [1], "b": [2]}', "no module order found in the reply"),
  ("\x00\ufffd\ufffdH", "no module order found in the reply"),
]


@pytest.mark.parametrize("text,why", FAILURES)
def test_parse_order_failures(text, why):
  assert parse_order(text) == (None, why)


def test_module_names():
  assert [module_name(n) for n in ["SC", "SR", "SCk", "scK", "VSC", "self_check", "Self-Reflection module"]] == [
    SC, SR, SCK, SCK, SCK, SCK, SR
  ]  # fmt: skip
  assert module_name("s c k") == SCK and module_name(3) is None and module_name("planner") is None


def test_plan_uses_the_experts_order():
  expert = Replies('{"order": ["SCk", "SR"]}')
  image = Image.new("RGB", (8, 8))
  summary = candidate_summary(["3", "4", "3"], [0.9, 0.2, 0.7])
  order, call = plan(expert, "How many bricks?", [image], summary)
  assert order == [SCK, SR]
  assert (call.ok, call.fallback, call.role, call.attempts, call.reason) == (True, False, "planner", 1, None)
  messages, (max_tokens, temperature) = expert.sent[0], expert.options[0]
  assert messages[0]["role"] == "system" and temperature == 0.0 and max_tokens == 256
  content = messages[1]["content"]
  assert content[0]["type"] == "image_url" and content[-1]["type"] == "text"
  assert (
    "How many bricks?" in content[-1]["text"] and "- 3: 2 of 3, mean confidence 0.80" in content[-1]["text"]
  )


def test_plan_falls_back_to_the_default_order():
  expert = Replies("Let me think about which modules... " * 20)
  order, call = plan(expert, "q", [])
  assert order == list(DEFAULT_ORDER) == [SC, SR, SCK]
  assert (call.ok, call.fallback, call.reason) == (True, True, "no module order found in the reply")
  assert call.output.startswith("Let me think") and len(call.output) == ex.OUTPUT_MAX_CHARS
  assert expert.last_call is call
  assert call.to_dict()["fallback"] is True


def test_plan_call_failure_raises():
  with pytest.raises(ex.ExpertError) as info:
    plan(Replies(ConnectionError("down")), "q", [])
  assert info.value.record.role == "planner" and not info.value.record.ok


def test_candidate_summary():
  text = candidate_summary(["a", "b", "a", "c", "d", "e", "f", "g"], top=3)
  lines = text.splitlines()
  assert lines[0] == "The model's 8 sampled answers:" and lines[1] == "- a: 2 of 8"
  assert lines[-1] == "- ... and 4 other answers" and len(lines) == 5
  assert candidate_summary([]) == ""
