"""CA-TTS and its baselines on one problem (methods.solve), on a scripted policy and a scripted
Expert: module order, boosts by hand totals, gates, expert failures, the memo across N,
baselines on nested prefixes. test_tts_runner.py reuses the scripted policy and Expert."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catts_jax.tts import engine, summary
from catts_jax.tts import expert as ex
from catts_jax.tts import methods as tts_methods
from catts_jax.tts.context import SCORE_KEYS, Drawn, Problem, Response
from catts_jax.tts.critic import CRITIC_SYSTEM
from catts_jax.tts.planner import PLANNER_SYSTEM, SELF_CONSISTENCY, SELF_REFLECTION, VISUAL_SELF_CHECK
from catts_jax.tts.voter import VOTER_SYSTEM
from configs import catts as catts_config

SC, SR, SCK = SELF_CONSISTENCY, SELF_REFLECTION, VISUAL_SELF_CHECK


def response(source, answer, confidence, index=0, gold="4"):
  tokens = [index, *map(ord, answer)]
  scores = {k: confidence for k in SCORE_KEYS}
  return Response(source, f"so the answer is {answer}", tokens, answer, answer == gold, confidence, scores)


class FakeOps:
  """A scripted policy: per problem id a list of (answer, confidence) samples; self-check
  scores per answer; re-answers with a fixed answer. Records what it was asked."""

  def __init__(self, samples, selfcheck=None, reanswer=("4", 0.7), fail_draw=(), fail_selfcheck=False):
    self.samples, self.selfcheck, self.reanswer_with = samples, selfcheck or {}, reanswer
    self.fail_draw, self.fail_selfcheck = set(fail_draw), fail_selfcheck
    self.draws, self.scored, self.reanswers, self.batches = [], [], [], []

  def prepare(self, index, example):
    if example.get("bad"):
      raise ValueError(f"{example['id']}: image 0 cannot be decoded")
    return Problem(index, example, f"prompt {example['id']}", [], f"question {example['id']}")

  def draw(self, problems, n, seed):
    self.draws.append(([p.id for p in problems], n, seed))
    failing = [p.id for p in problems if p.id in self.fail_draw]
    if failing:
      raise ValueError(f"{failing[0]}: prompt length in tokens 9999 exceeds the largest bucket")
    out = []
    for p in problems:
      samples = [
        response(f"sample {j}", a, c, j, p.example["answer"])
        for j, (a, c) in enumerate(self.samples[p.id][:n])
      ]
      conf = np.array([[s.confidence] * 4 for s in samples])
      out.append(Drawn(samples, conf, np.full(len(samples), 4)))
    return out

  def decode(self, problems, vcd=False):
    return [
      response("vcd" if vcd else "greedy", self.samples[p.id][0][0], 0.5, 0, p.example["answer"])
      for p in problems
    ]

  def reanswer_all(self, requests):
    self.batches.append(("reanswer", len(requests)))
    out = []
    for r in requests:
      self.reanswers.append((r.target.source, r.critique, r.seed))
      answer, conf = self.reanswer_with
      out.append(response("reflection", answer, conf, 99, r.problem.example["answer"]))
    return out

  def selfcheck_all(self, requests):
    self.batches.append(("selfcheck", len(requests)))
    if self.fail_selfcheck:
      raise RuntimeError("scorer out of memory")
    out = []
    for r in requests:
      self.scored.append(r.responses)
      answers = ["".join(chr(t) for t in tokens[1:]) for tokens in r.responses]
      pairs = [self.selfcheck.get(a, (0.5, 0.5)) for a in answers]
      out.append((np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])))
    return out


class RoleExpert(ex.Expert):
  """Answers by role (read from the system prompt); a role's replies are used in turn, the
  last one repeating; an Exception reply is raised."""

  name = "scripted"

  def __init__(self, **replies):
    super().__init__(ex.RetryPolicy(max_retries=0))
    self.replies, self.sent = {k: list(v) for k, v in replies.items()}, []

  def _send(self, messages, max_tokens, temperature):
    system = messages[0]["content"]
    role = {PLANNER_SYSTEM: "planner", VOTER_SYSTEM: "voter", CRITIC_SYSTEM: "critic"}[system]
    self.sent.append((role, messages[1]["content"][-1]["text"]))
    queue = self.replies[role]
    reply = queue.pop(0) if len(queue) > 1 else queue[0]
    if isinstance(reply, Exception):
      raise reply
    return reply


def config(planner="paper", selfcheck="drop", **tts):
  """configs/catts.py with `tts` overrides; the self-check by confidence drop unless told (the
  hand totals below are the drop rule's)."""
  cfg = catts_config.get_config()
  cfg.tts.update(tts)
  cfg.planner.mode = planner
  cfg.selfcheck.mode = selfcheck
  return cfg


SAMPLES = [("3", 0.9), ("4", 0.8), ("3", 0.2), ("5", 0.6)]
SELFCHECK = {"3": (0.9, 0.85), "4": (0.8, 0.2), "5": (0.6, 0.7)}  # drops 0.05, 0.6, 0


def solve(ops, expert, cfg, ns=(4,), methods=tts_methods.DEFAULT_METHODS, example=None):
  example = example or {"id": "p1", "answer": "4"}
  problem = ops.prepare(0, example)
  drawn = ops.draw([problem], max(ns), 0)[0]
  greedy, vcd = ops.decode([problem])[0], ops.decode([problem], vcd=True)[0]
  steps = tts_methods.solve(problem, drawn, greedy, vcd, ns=ns, methods=methods, cfg=cfg, expert=expert)
  return engine.serial(steps, ops, expert)


def test_default_order_without_expert_by_hand_totals():
  ops = FakeOps({"p1": SAMPLES}, SELFCHECK)
  row = solve(ops, None, config())
  r = row["methods"]["catts"]["4"]
  assert r["order"] == [SC, SR, SCK] and r["plan"] == {"by": "default", "reason": "no expert"}
  sc, sr, sck = r["modules"]
  assert sc["voter"] == {"ran": False, "reason": "no expert"}
  assert (
    sr["ran"] is False and sr["reason"] == "no expert to critique" and sr["signal"] == pytest.approx(0.55)
  )
  assert (
    sck["ran"]
    and sck["candidates"] == ["3", "4", "5"]
    and sck["scored"] == ["sample 0", "sample 1", "sample 3"]
  )
  assert sck["drops"] == pytest.approx([0.05, 0.6, 0.0])
  # SC: 3 -> 1.1, 4 -> 0.8, 5 -> 0.6; the self-check gives each 0.5 * 4 = 2 times its drop
  # (the drops sum to 0.65 < 1, so no scaling down).
  assert sck["added"] == pytest.approx({"3": 2 * 0.05, "4": 2 * 0.6})
  totals = r["table"]["totals"]
  assert totals == pytest.approx({"3": 1.1 + 2 * 0.05, "4": 0.8 + 2 * 0.6, "5": 0.6})
  assert (r["answer"], r["correct"]) == ("4", True)
  assert r["confidence"] == pytest.approx(totals["4"] / sum(totals.values()))
  assert row["expert_calls"] == []
  # Majority and confidence-weighted votes pick "3" from the same samples.
  assert row["methods"]["majority"]["4"]["answer"] == "3" and not row["methods"]["majority"]["4"]["correct"]
  json.dumps(row)  # a results.jsonl row


def test_planner_order_voter_and_critic():
  expert = RoleExpert(
    planner=['{"order": ["SC", "SR"]}'],
    voter=['{"A1": 0.25, "A2": 0.75, "A3": 0}'],
    critic=["Look again at the left bar."],
  )
  ops = FakeOps({"p1": SAMPLES}, SELFCHECK, reanswer=("4", 0.7))
  row = solve(ops, expert, config("adaptive", reflection_threshold=0.85))
  r = row["methods"]["catts"]["4"]
  assert r["order"] == [SC, SR] and r["plan"] == {"by": "expert"}
  sc, sr = r["modules"]
  assert sc["voter"]["probs"] == {"3": 0.25, "4": 0.75, "5": 0.0}
  assert sc["voter"]["added"] == pytest.approx({"3": 0.5, "4": 1.5})  # tau * N = 2
  # The winner "4" has mean sample confidence 0.8 < 0.85: its most confident sample is critiqued.
  assert sr["ran"] and sr["critiqued"] == "sample 1" and sr["signal"] == pytest.approx(0.8)
  assert sr["critique"] == "Look again at the left bar." and sr["added"] == 2.0
  assert ops.reanswers == [("sample 1", "Look again at the left bar.", ops.reanswers[0][2])]
  assert r["table"]["totals"] == pytest.approx({"3": 1.6, "4": 0.8 + 1.5 + 2.0, "5": 0.6})
  assert r["answer"] == "4" and r["correct"]
  assert ops.scored == []  # the planner skipped the self-check
  roles = [(c["role"], c["ok"], c["n"], c["cached"]) for c in row["expert_calls"]]
  assert roles == [("planner", True, 4, False), ("voter", True, 4, False), ("critic", True, 4, False)]
  assert "so the answer is 4" in expert.sent[2][1]  # the critic read the critiqued response
  assert all(c["latency_s"] >= 0 and c["attempts"] == 1 for c in row["expert_calls"])


def test_paper_planner_plans_once_from_image_and_question_and_orders_every_module():
  """The paper's planner: one call serves every N, its prompt holds no sampled answer, and a
  reply naming only SR runs SR first and then the rest in the default order."""
  samples = [("3", 0.9), ("4", 0.8), ("3", 0.7), ("4", 0.1)]
  expert = RoleExpert(planner=['{"order": ["SR"]}'], voter=['{"A1": 1}'], critic=["Recount."])
  row = solve(FakeOps({"p1": samples}, SELFCHECK, reanswer=("5", 0.5)), expert, config(), ns=(2, 4))
  planner_calls = [(c["n"], c["cached"]) for c in row["expert_calls"] if c["role"] == "planner"]
  assert planner_calls == [(2, False), (4, True)]
  prompt = next(text for role, text in expert.sent if role == "planner")
  assert "The model's" not in prompt and "all three modules" in prompt and "skip" not in prompt
  for n in ("2", "4"):
    r = row["methods"]["catts"][n]
    assert r["order"] == [SR, SC, SCK] and r["plan"] == {"by": "expert"}
  assert row["expert_calls"][0]["reason"] == f"completed with {SC}, {SCK}"
  # The adaptive planner sees the answers and keeps the reply's order as given.
  expert = RoleExpert(planner=['{"order": ["SR"]}'], voter=['{"A1": 1}'], critic=["Recount."])
  row = solve(FakeOps({"p1": samples}, SELFCHECK, reanswer=("5", 0.5)), expert, config("adaptive"), ns=(2, 4))
  assert row["methods"]["catts"]["4"]["order"] == [SR]
  assert "The model's 2 sampled answers" in next(text for role, text in expert.sent if role == "planner")


def test_expert_failures_cost_the_module_not_the_problem():
  expert = RoleExpert(
    planner=[ConnectionError("refused")], voter=["I cannot tell."], critic=[ConnectionError("refused")]
  )
  ops = FakeOps({"p1": SAMPLES}, SELFCHECK)
  row = solve(ops, expert, config())
  r = row["methods"]["catts"]["4"]
  assert r["order"] == [SC, SR, SCK] and r["plan"]["by"] == "default"
  assert r["plan"]["reason"].startswith("planner failed: ConnectionError")
  sc, sr, sck = r["modules"]
  assert sc["voter"]["reason"].startswith("voter failed: unparseable voter output")
  assert sr["ran"] is False and sr["reason"].startswith("critic failed")
  assert sck["ran"] and r["answer"] == "4"  # SC + self-check still decide
  calls = row["expert_calls"]
  assert [(c["role"], c["ok"]) for c in calls] == [("planner", False), ("voter", False), ("critic", False)]
  assert calls[1]["output"] == "I cannot tell." and "ConnectionError" in calls[0]["error"]


def test_memo_reuses_identical_requests_across_n():
  samples = [("3", 0.9), ("4", 0.8), ("3", 0.7), ("4", 0.1)]  # N=2 and N=4 see the same candidates
  expert = RoleExpert(planner=["nothing useful"], voter=['{"A1": 1}'], critic=["Recount."])
  ops = FakeOps({"p1": samples}, SELFCHECK, reanswer=("5", 0.5))
  row = solve(ops, expert, config("adaptive", reflection_threshold=1.01), ns=(2, 4))
  calls = [(c["role"], c["n"], c["cached"]) for c in row["expert_calls"]]
  assert calls == [
    ("planner", 2, False), ("voter", 2, False), ("critic", 2, False),
    ("planner", 4, False), ("voter", 4, True), ("critic", 4, True),
  ]  # fmt: skip
  assert [role for role, _ in expert.sent] == ["planner", "voter", "critic", "planner"]
  assert all(c["latency_s"] == 0.0 and c["attempts"] == 0 for c in row["expert_calls"] if c["cached"])
  assert row["expert_calls"][0]["fallback"] and row["methods"]["catts"]["2"]["plan"]["by"] == "default"
  assert len(ops.reanswers) == 1  # the same critique of the same response: one re-answer
  assert sum(len(t) for t in ops.scored) == 3  # "3", "4" and the re-answer "5", each scored once
  for n in ("2", "4"):
    assert row["methods"]["catts"][n]["modules"][1]["answer"] == "5"
    assert row["methods"]["catts"][n]["modules"][2]["scored"] == ["sample 0", "sample 1", "reflection"]


def test_a_lone_candidate_gets_the_voters_whole_boost_without_a_call():
  """One candidate: every reply the Voter can read renormalises to 1.0 on it, so no call is
  made; the boost is the same as a call answering it (or failing to parse: that lost it)."""
  samples = [("4", 0.9), ("4", 0.8), ("3", 0.7), ("4", 0.6)]  # N=2: "4" alone; N=4: "4", "3"
  expert = RoleExpert(planner=['{"order": ["SC"]}'], voter=['{"A1": 0.2, "A2": 0.8}'])
  row = solve(FakeOps({"p1": samples}), expert, config(), ns=(2, 4), methods=("sc+voter", "voter-alone"))
  assert [role for role, _ in expert.sent] == ["voter"]  # N=4's two candidates only
  lone = row["methods"]["sc+voter"]["2"]["modules"][0]["voter"]
  assert lone["ran"] and lone["probs"] == {"4": 1.0} and lone["added"] == {"4": pytest.approx(0.5 * 2)}
  assert row["methods"]["voter-alone"]["2"]["answer"] == "4"
  assert row["methods"]["voter-alone"]["4"]["answer"] == "3"


def test_a_plan_without_sc_that_leaves_no_answer_gets_the_sc_votes():
  expert = RoleExpert(planner=['{"order": ["SCk"]}'], voter=['{"A1": 1}'])
  row = solve(FakeOps({"p1": SAMPLES}, SELFCHECK), expert, config("adaptive"))
  r = row["methods"]["catts"]["4"]
  assert r["order"] == [SCK]
  assert r["modules"][0] == {
    "module": SCK, "mode": "drop", "margin": 0.0, "ran": False, "reason": "no candidate answers"
  }  # fmt: skip
  assert r["modules"][1]["module"] == SC and r["modules"][1]["reason"] == "the plan left no answer"
  assert r["answer"] == "3"  # SC 1.1 + voter 0.5 * 4 * 1 on "3"


def test_reflection_gate_and_selfcheck_gate_skip_with_reasons():
  samples = [("4", 0.95)] * 4
  expert = RoleExpert(planner=['{"order": ["SC", "SR", "SCk"]}'], voter=['{"A1": 1}'])
  row = solve(FakeOps({"p1": samples}), expert, config(reflection_threshold=0.9))
  _, sr, sck = row["methods"]["catts"]["4"]["modules"]
  assert sr == {
    "module": SR,
    "signal": pytest.approx(0.95),
    "ran": False,
    "reason": "confidence 0.950 >= threshold 0.9",
  }
  assert sck == {
    "module": SCK,
    "mode": "drop",
    "margin": 1.0,
    "ran": False,
    "reason": "margin 1.000 >= threshold 1",
  }


def test_contrastive_selfcheck_changes_the_vote_in_one_case_not_another():
  """The paper's self-check: the VCD decode's answer (the fake decodes sample 0's) joins the
  vote with selfcheck_weight * N = 2. Here it overturns the samples' "3" for "4" ..."""
  flipped = [("4", 0.9), ("3", 0.8), ("3", 0.2), ("5", 0.6)]  # SC: 3 -> 1.0, 4 -> 0.9, 5 -> 0.6
  row = solve(FakeOps({"p1": flipped}, SELFCHECK), None, config(selfcheck="contrastive"))
  r = row["methods"]["catts"]["4"]
  sck = r["modules"][2]
  assert sck["ran"] and sck["contrastive"] == {"answer": "4", "added": 2.0} and "drops" not in sck
  assert r["table"]["totals"] == pytest.approx({"4": 0.9 + 2.0, "3": 1.0, "5": 0.6})
  assert r["answer"] == "4" and row["methods"]["majority"]["4"]["answer"] == "3"
  # ... and here it backs the samples' winner, which stays.
  row = solve(FakeOps({"p1": SAMPLES}, SELFCHECK), None, config(selfcheck="contrastive"))
  r = row["methods"]["catts"]["4"]
  assert r["modules"][2]["contrastive"] == {"answer": "3", "added": 2.0}
  assert r["table"]["totals"] == pytest.approx({"3": 1.1 + 2.0, "4": 0.8, "5": 0.6}) and r["answer"] == "3"
  # "both": the drops (by hand, as in the default-order test) and the contrastive answer.
  row = solve(FakeOps({"p1": SAMPLES}, SELFCHECK), None, config(selfcheck="both"))
  r = row["methods"]["catts"]["4"]
  assert r["modules"][2]["added"] == pytest.approx({"3": 2 * 0.05, "4": 2 * 0.6})
  assert r["table"]["totals"] == pytest.approx({"3": 1.1 + 2 * 0.05 + 2.0, "4": 0.8 + 2 * 0.6, "5": 0.6})


def test_reflection_after_the_selfcheck_critiques_the_vcd_decode_when_its_answer_wins():
  """The contrastive self-check's answer may be one no sample gave; when it wins and
  Self-Reflection comes next, the response critiqued is the VCD decode's (it once had none)."""
  expert = RoleExpert(planner=['{"order": ["SC", "SCk", "SR"]}'], voter=['{"A1": 1, "A2": 1, "A3": 1}'],
                      critic=["Look again at the left bar."])  # fmt: skip
  ops = FakeOps({"p1": SAMPLES}, SELFCHECK, reanswer=("4", 0.7))
  problem = ops.prepare(0, {"id": "p1", "answer": "4"})
  drawn = ops.draw([problem], 4, 0)[0]
  vcd = response("vcd", "7", 0.5)
  cfg = config(planner="paper", selfcheck="contrastive")
  steps = tts_methods.solve(
    problem, drawn, ops.decode([problem])[0], vcd, ns=(4,), methods=("catts",), cfg=cfg, expert=expert
  )
  r = engine.serial(steps, ops, expert)["methods"]["catts"]["4"]
  assert r["order"] == [SC, SCK, SR] and r["modules"][1]["contrastive"] == {"answer": "7", "added": 2.0}
  sr = r["modules"][2]
  assert sr["ran"] and sr["signal"] == 0.0 and sr["critiqued"] == "vcd"  # no sample gave "7"
  assert ops.reanswers[0][0] == "vcd" and "so the answer is 7" in expert.sent[-1][1]
  assert r["table"]["totals"] == pytest.approx(
    {"3": 1.1 + 2 / 3, "4": 0.8 + 2 / 3 + 2.0, "5": 0.6 + 2 / 3, "7": 2.0}
  )


def test_module_by_module_on_the_same_samples_and_expert_answers():
  """The ablations add one module at a time in the default order (no Planner) and share the
  Expert's answers: one Voter call and one Critic call serve every method."""
  expert = RoleExpert(planner=['{"order": ["SC", "SR", "SCk"]}'], voter=['{"A1": 0.25, "A2": 0.75, "A3": 0}'],
                      critic=["Look again at the left bar."])  # fmt: skip
  ops = FakeOps({"p1": SAMPLES}, SELFCHECK, reanswer=("4", 0.7))
  methods = ("sc", "voter-alone", *tts_methods.ABLATIONS, "catts")
  row = solve(ops, expert, config(reflection_threshold=0.85), methods=methods)
  m = {name: row["methods"][name]["4"] for name in methods}
  assert m["sc"] == {"answer": "3", "correct": False, "confidence": pytest.approx(1.1 / 2.5)}
  assert m["voter-alone"] == {"answer": "4", "correct": True, "confidence": 0.75}
  assert m["sc+voter"]["table"]["totals"] == pytest.approx({"3": 1.1 + 0.5, "4": 0.8 + 1.5, "5": 0.6})
  assert m["sc+voter"]["order"] == [SC] and m["sc+voter"]["plan"] == {"by": "ablation"}
  with_sr = {"3": 1.6, "4": 2.3 + 2.0, "5": 0.6}  # the re-answer "4" adds 0.5 N
  assert m["sc+voter+sr"]["table"]["totals"] == pytest.approx(with_sr)
  drops = {"3": 2 * 0.05, "4": 2 * 0.6}  # the drop rule's shares of 0.5 N, as in the default-order test
  full = {a: w + drops.get(a, 0.0) for a, w in with_sr.items()}
  assert m["sc+voter+sr+sck"]["table"]["totals"] == pytest.approx(full)
  assert m["catts"]["table"]["totals"] == pytest.approx(full) and m["catts"]["plan"] == {"by": "expert"}
  fresh = [c["role"] for c in row["expert_calls"] if not c["cached"]]
  assert fresh == ["voter", "critic", "planner"] and len(ops.reanswers) == 1
  # The run's summary counts calls sent; answers reused by other methods are counted apart.
  voter = summary.expert_summary([row])["voter"]
  assert (voter["calls"], voter["ok"], voter["cached"]) == (1, 1, 4)


def test_baselines_on_nested_prefixes():
  samples = [("a", 0.2), ("b", 0.9), ("b", 0.8), ("a", 0.3), ("a", 0.1)]
  ops = FakeOps({"p1": samples})
  row = solve(ops, None, config(deepconf_keep=0.5, deepconf_confidence="conf_tail"), ns=(1, 2, 5),
              example={"id": "p1", "answer": "b"})  # fmt: skip
  m = row["methods"]
  assert set(m) == set(tts_methods.DEFAULT_METHODS)
  for method in set(tts_methods.SAMPLED) & set(m):  # N=1: the first sample's answer, whatever the method
    assert m[method]["1"]["answer"] == "a" and not m[method]["1"]["correct"]
  assert m["majority"]["5"]["answer"] == "a" and m["majority"]["5"]["confidence"] == pytest.approx(0.6)
  assert m["best-of-n"]["5"] == {"answer": "b", "correct": True, "confidence": 0.9}
  # DeepConf keeps the top half by confidence (>= the median 0.3): b 0.9 + 0.8 against a 0.3.
  assert m["deepconf"]["5"]["answer"] == "b" and m["deepconf"]["5"]["confidence"] == pytest.approx(1.7 / 2.0)
  online = m["deepconf-online"]["5"]
  assert online["answer"] == "b" and online["tokens"] == 20 and online["token_savings"] == 0.0  # all warm-up
  assert m["greedy"] == {"answer": "a", "correct": False, "confidence": 0.5}
  assert [s["source"] for s in row["samples"]] == [f"sample {j}" for j in range(5)]
  assert row["samples"][1]["conf_tail"] == 0.9 and row["gold"] == "b"
