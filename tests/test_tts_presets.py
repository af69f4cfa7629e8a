"""The presets of configs/catts.py (paper, release, ours) and what the release's settings change:
its prompts (requests and replies), no gates, no Planner, the Voter's int(tau * N) of answered
samples, its template; docs/fidelity.md lists every setting with each preset's value."""

from __future__ import annotations

import json
import pathlib
import re
import types

import pytest

from catts_jax.data import prompts
from catts_jax.tts import expert as ex
from catts_jax.tts import release_prompts, voting
from catts_jax.tts.critic import clean_critique, critique_ask
from catts_jax.tts.planner import (
  PLANNER_MODES,
  SELF_CONSISTENCY,
  SELF_REFLECTION,
  VISUAL_SELF_CHECK,
  plan_ask,
)
from catts_jax.tts.reflection import reanswer_prompt
from catts_jax.tts.selfcheck import SELFCHECK_MODES
from catts_jax.tts.voter import vote_ask
from configs import catts as catts_config
from tests.test_tts_methods import SELFCHECK, FakeOps, solve

ROOT = pathlib.Path(__file__).parents[1]
SC, SR, SCK = SELF_CONSISTENCY, SELF_REFLECTION, VISUAL_SELF_CHECK


def flat(cfg, prefix=""):
  out = {}
  for key, value in cfg.items():
    if hasattr(value, "items"):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


@pytest.mark.parametrize("preset", catts_config.PRESETS)
def test_each_preset_is_valid(preset):
  cfg = catts_config.get_config(preset)
  voting.TTSConfig(**cfg.tts)
  assert cfg.selfcheck.mode in SELFCHECK_MODES and cfg.planner.mode in PLANNER_MODES
  assert release_prompts.check_style(cfg.prompts) == cfg.prompts


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="configs/catts.py:papr: unknown preset"):
    catts_config.get_config("papr")


def fidelity_table():
  """docs/fidelity.md's settings table: {setting: {column: cell}}."""
  lines = [
    line for line in (ROOT / "docs" / "fidelity.md").read_text().splitlines() if line.startswith("| `")
  ]
  header = next(
    line for line in (ROOT / "docs" / "fidelity.md").read_text().splitlines() if line.startswith("| Setting")
  )
  columns = [c.strip() for c in header.strip("|").split("|")]
  table = {}
  for line in lines:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    table[cells[0].strip("`")] = dict(zip(columns, cells))
  return table


def test_fidelity_lists_every_setting_with_each_presets_value():
  table = fidelity_table()
  settings = {p: flat(catts_config.get_config(p)) for p in catts_config.PRESETS}
  assert set(table) == set(settings["ours"]), "docs/fidelity.md and configs/catts.py list other settings"
  for key, row in table.items():
    for preset in catts_config.PRESETS:
      cell = row[f"`{preset}`"]
      value = settings[preset][key]
      shown = re.fullmatch(r"`(.*)`", cell)
      assert shown, f"{key}: the {preset} cell {cell!r} is not a `value`"
      assert shown.group(1) == json.dumps(value), f"{key}: docs say {cell} for {preset}, config has {value!r}"


class TextRoleExpert(ex.Expert):
  """Answers the release's prompts by role (read from their text; they carry no system turn)."""

  name = "scripted-release"

  def __init__(self, **replies):
    super().__init__(ex.RetryPolicy(max_retries=0))
    self.replies, self.sent = replies, []

  def _send(self, messages, max_tokens, temperature):
    assert len(messages) == 1 and messages[0]["role"] == "user"
    text = messages[0]["content"][-1]["text"]
    role = next(
      r for r, mark in (("planner", "Expert Planner"), ("voter", "candidate options"), ("critic", "Critique:"))
      if mark in text
    )  # fmt: skip
    self.sent.append((role, text))
    return self.replies[role]


def call_record(role):
  return ex.ExpertCall(role=role, ok=True, latency_s=0.0, attempts=1)


def release_config(**tts):
  cfg = catts_config.get_config("release")
  cfg.tts.update(tts)
  return cfg


def test_release_voter_prompt_lists_sorted_candidates_and_reads_a_bare_list():
  ask = vote_ask("How many?", [], ["5", "12", "3"], style="release")
  text = ask.messages[0]["content"][-1]["text"]
  assert "['12', '3', '5']" in text and text.endswith("User question: How many?")
  probs, _ = ask.read(ex.Expert(ex.RetryPolicy(0)), "[0.7, 0.2, 0.1]", call_record("voter"))
  assert probs == pytest.approx({"12": 0.7, "3": 0.2, "5": 0.1})


def test_release_critic_sees_the_answer_alone_and_its_lead_in_is_dropped():
  ask = critique_ask("How many?", [], "I counted 3 bars, so 3.", answer="3", style="release")
  text = ask.messages[0]["content"][-1]["text"]
  assert "Model Answer: 3" in text and "I counted" not in text and len(ask.messages) == 1
  reply = 'Critique: Based on this question, your answer is "3", the leftmost bar was missed.'
  assert clean_critique(reply) == "the leftmost bar was missed."
  with pytest.raises(ex.ExpertError, match="empty critique"):
    ask.read(
      ex.Expert(ex.RetryPolicy(0)),
      'Critique: Based on this question, your answer is "3", ',
      call_record("critic"),
    )


def test_release_planner_reads_module_order_and_completes_it():
  ask = plan_ask("How many?", [], style="release")
  assert "Question: How many?" in ask.messages[0]["content"][-1]["text"]
  expert = ex.Expert(ex.RetryPolicy(0))
  reply = '{"module_order": ["self_check", "self_consistency"], "reasoning": "a counting task"}'
  order, _ = ask.read(expert, reply, call_record("planner"))
  assert order == [SCK, SC, SR]


def test_release_reanswer_is_one_user_turn_with_the_analysis():
  sent = []
  processor = types.SimpleNamespace(
    hf=types.SimpleNamespace(apply_chat_template=lambda m, **kw: sent.append(m) or json.dumps(m))
  )
  example = {"id": "p", "benchmark": "mathvision", "question": "How many bars?", "images": [None]}
  reanswer_prompt(processor, example, "so 3", "recount", answer="3", style="release")
  reanswer_prompt(processor, example, "so 3", "recount", answer="3")
  release, ours = sent
  assert [m["role"] for m in release] == ["user"] and [m["role"] for m in ours] == [
    "user",
    "assistant",
    "user",
  ]
  text = release[0]["content"][-1]["text"]
  assert text.startswith("How many bars?\n\n--- Previous Analysis ---")
  assert "resulted in the answer '3'" in text and "critique of that attempt: recount" in text
  assert text.endswith("Put your final answer in one '\\boxed{}'.") and release[0]["content"][0] == {
    "type": "image"
  }


def test_release_runs_every_module_without_a_planner_and_rounds_the_voter_boost():
  """Unanimous, confident samples: the paper's gates skip reflection and the self-check; the
  release runs both. Its Voter adds int(0.5 * 3 answered) = 1; its reflection 0.5 * N = 2."""
  samples = [("4", 0.95), ("4", 0.95), ("", 0.95), ("4", 0.95)]
  expert = TextRoleExpert(
    voter="[1.0]", critic='Critique: Based on this question, your answer is "4", recount.'
  )
  cfg = release_config()
  cfg.selfcheck.mode = "drop"
  # The re-answer agrees, so the table stays unanimous (margin 1) when the self-check comes.
  row = solve(FakeOps({"p1": samples}, SELFCHECK, reanswer=("4", 0.5)), expert, cfg)
  r = row["methods"]["catts"]["4"]
  assert r["order"] == [SC, SR, SCK] and r["plan"] == {"by": "default", "reason": "planner off"}
  sc, sr, sck = r["modules"]
  assert sc["voter"]["added"] == {"4": 1.0}
  assert sr["ran"] and sr["critique"] == "recount." and sr["added"] == 2.0
  assert sck["ran"] and sck["margin"] == 1.0
  assert [role for role, _ in expert.sent] == ["critic"]  # "4" alone: the Voter's 1.0 needs no call
  # The same problem under the paper's preset: gated, so neither module runs.
  paper = catts_config.get_config("paper")
  paper.selfcheck.mode = "drop"
  row = solve(FakeOps({"p1": samples}, SELFCHECK), None, paper)
  _, sr, sck = row["methods"]["catts"]["4"]["modules"]
  assert not sr["ran"] and not sck["ran"]


def test_release_template_wording():
  mc = {"benchmark": "mmmu", "question": "Which?", "options": ["1", "2"], "question_type": "multiple_choice"}
  text = prompts.prompt_for(mc, "release")
  assert text.startswith("Please solve the problem step by step and put your answer in one '\\boxed{}'.")
  assert text.endswith("Which?\nChoices:\n(A) 1\n(B) 2")
  assert prompts.prompt_for({**mc, "benchmark": "mathvision"}, "release") == "Which?\nChoices:\n(A) 1\n(B) 2"


class TopKWeights(FakeOps):
  """Samples whose vote weight is the release's top-20 confidence (~5-20), exp(-NMLP) 0.4."""

  def draw(self, problems, n, seed):
    drawn = super().draw(problems, n, seed)
    for d in drawn:
      for s in d.samples:
        s.scores["confidence"] = 0.4
    return drawn


def test_reported_confidences_stay_probabilities_when_votes_weigh_by_topk_confidence():
  """ECE needs probabilities: best-of-n, greedy and VCD report exp(-NMLP), not the vote weight
  (a release-preset run over Math-Vision stopped at its report on a confidence of 7)."""
  samples = [("4", 7.0), ("3", 9.0), ("4", 6.0)]
  row = solve(TopKWeights({"p1": samples}, SELFCHECK), None, release_config(), ns=(3,))
  methods = row["methods"]
  assert methods["best-of-n"]["3"] == {"answer": "3", "correct": False, "confidence": 0.4}
  assert methods["majority"]["3"]["answer"] == "4"
  assert all(0 <= methods[m]["3"]["confidence"] <= 1 for m in ("majority", "deepconf", "catts"))
