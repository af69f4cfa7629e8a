"""The from-scratch CA-TTS Expert (catts_jax/rl/expert_data.py, expert_sft.py, expert_eval.py;
`train.expert`): its training prompts are exactly the requests CA-TTS sends, rendered as the
`self` Expert renders them; its targets parse with the roles' own readers and say what the
ground truth says; the policy's samples are drawn once (a resume reads them); a short run
resumes and its export loads with Policy.from_pretrained; the evaluation's figures."""

import json
from pathlib import Path

import numpy as np
import pytest

from catts_jax.data import schema, synthetic
from catts_jax.policy import Policy
from catts_jax.rl import expert_data as ed
from catts_jax.rl import expert_eval, expert_sft
from catts_jax.tts.context import stable_seed
from catts_jax.tts.critic import critique_ask
from catts_jax.tts.expert import Expert, ExpertCall, RetryPolicy
from catts_jax.tts.planner import PLANNER_SYSTEM, plan_ask
from catts_jax.tts.policy_ops import PolicyOps
from catts_jax.tts.self_expert import SelfExpert
from catts_jax.tts.voter import vote_ask
from configs import catts, synthetic_expert

TASKS = ("count", "bricks", "bars")


def example(i: int, split: str = "train") -> dict:
  return schema.from_record(synthetic.generate(TASKS, split, i))


EXAMPLES = [example(i) for i in range(6)]  # count, bricks, bars, count, bricks, bars


def call(role: str) -> ExpertCall:
  return ExpertCall(role, True, 0.0, 1)


def read(ask, text: str):
  return ask.read(Expert(RetryPolicy(max_retries=0)), text, call(ask.role))[0]


def a_wrong_answer(ex: dict) -> str:
  if ex["options"]:
    return "B" if ex["answer"] == "C" else "C"
  return str(int(ex["answer"]) + 1)


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
  return Policy.from_pretrained(tiny_ckpt)


def test_requests_are_the_ones_catts_sends(policy):
  """Each role row's request equals CA-TTS's (the Problem of PolicyOps.prepare, as
  methods.py / reflection.py pass it), rendered exactly as SelfExpert renders it; a solve row
  is the policy's own prompt."""
  ops = PolicyOps(policy, "synthetic", catts.get_config())
  render = SelfExpert(policy).render
  for i, ex in enumerate(EXAMPLES[:3]):
    problem = ops.prepare(i, ex)
    truth, wrong = str(ex["answer"]), a_wrong_answer(ex)
    response = ex["metadata"]["solution"].replace(f"{{{truth}}}", f"{{{wrong}}}")
    rows_and_asks = [
      (ed.Row("planner", i), plan_ask(problem.question, problem.images, order_all=True)),
      (ed.Row("voter", i, (wrong, truth), truth), vote_ask(problem.question, problem.images, [wrong, truth])),
      (
        ed.Row("critic", i, response=response, answer=wrong),
        critique_ask(problem.question, problem.images, response, answer=wrong),
      ),
    ]
    for row, want in rows_and_asks:
      got = ed.ask_for(row, ex)
      assert got.role == want.role and got.messages == want.messages, row.kind
      prompt, images, _ = ed.materialise(render, policy, ex, row)
      want_prompt, want_images = render(want.messages)
      assert prompt == want_prompt and "<|image_pad|>" in prompt
      assert [np.asarray(im).tolist() for im in images] == [np.asarray(im).tolist() for im in problem.images]
    prompt, images, target = ed.materialise(render, policy, ex, ed.Row("solve", i))
    assert prompt == problem.prompt and target == ex["metadata"]["solution"]
    assert [np.asarray(im).tolist() for im in images] == [np.asarray(im).tolist() for im in problem.images]


def test_targets_parse_and_say_the_truth():
  for i, ex in enumerate(EXAMPLES):
    truth, wrong = str(ex["answer"]), a_wrong_answer(ex)
    planner = ed.ask_for(ed.Row("planner", i), ex)
    order, got = planner.read(
      Expert(RetryPolicy(max_retries=0)), ed.target_for(ed.Row("planner", i), ex), call("planner")
    )
    assert order == list(ed.PLANNER_ORDERS[ex["category"]]) and not got.fallback and got.reason is None
    assert sorted(order) == sorted(ed.MODULES)

    for cands in ([truth], [wrong, truth], [truth, wrong, "17"], [wrong, "17", "19", truth]):
      row = ed.Row("voter", i, tuple(cands), truth)
      target = ed.target_for(row, ex)
      # It solves first, as the prompt asks, then every label's floor and its answer last.
      solution, votes = target[: target.index(" {")], target[target.index(" {") + 1 :]
      assert solution == f"{ed.reasoning(ex)} The answer is {truth}." and votes == json.dumps(
        json.loads(votes)
      )
      assert list(json.loads(votes)) == [f"A{k + 1}" for k in range(len(cands))] + [truth]
      probs = read(ed.ask_for(row, ex), target)
      # As read: the answer's mass over its candidate's label floor, renormalised.
      weights = {c: ed.VOTER_MASS if c == truth else ed.label_floor(len(cands)) for c in cands}
      assert list(probs) == cands and probs == pytest.approx(
        {c: w / sum(weights.values()) for c, w in weights.items()}
      )
      assert max(probs, key=probs.get) == truth and probs[truth] >= ed.VOTER_MASS
    nobody = ed.Row("voter", i, (wrong, "17"), None)  # its answer is no candidate: uniform
    assert read(ed.ask_for(nobody, ex), ed.target_for(nobody, ex)) == {wrong: 0.5, "17": 0.5}

    reference = ed.reasoning(ex)
    response = ex["metadata"]["solution"]
    right = ed.Row("critic", i, response=response, answer=truth, correct=True)
    text = read(ed.ask_for(right, ex), ed.target_for(right, ex))
    assert text.startswith(reference) and "The response is right" in text
    assert expert_eval.named_answer(text) == truth

    bad = EXAMPLES[(i + 3) % 6]["metadata"]["solution"]  # same task, another problem
    if ed.wrong_sentence(bad, reference) is None:
      continue
    wrong_row = ed.Row("critic", i, response=bad, answer=wrong, correct=False)
    text = read(ed.ask_for(wrong_row, ex), ed.target_for(wrong_row, ex))
    assert text.startswith(reference) and "The response is right" not in text
    assert f'"{ed.wrong_sentence(bad, reference)}", which is wrong' in text
    assert expert_eval.named_answer(text) == truth and text.endswith(f"not {wrong}.")


def test_the_quoted_sentence_is_the_first_one_the_reference_lacks():
  ref = "The wall has 3 rows of 4 bricks, so 12 bricks in all. I count 9 bricks. 12 - 9 = 3."
  resp = "The wall has 3 rows of 4 bricks, so 12 bricks in all. I count 10 bricks. 12 - 10 = 2. The answer is \\boxed{2}."
  assert ed.wrong_sentence(resp, ref) == "I count 10 bricks."
  assert ed.wrong_sentence(ref + " The answer is \\boxed{3}.", ref) is None


def samples_of(answers, correct, texts=None):
  return {"texts": texts or [f"... \\boxed{{{a}}}." for a in answers], "answers": answers, "correct": correct}


def test_pools_take_candidates_in_vote_table_order():
  samples = {
    0: samples_of(
      ["4", "", "3", "4", "5", "3", "3", "3"], [False, False, True, False, False, True, True, True]
    ),
    1: samples_of(["2"] * 8, [True] * 8),
  }
  pools = ed.pools(EXAMPLES[:3], samples, seed=0, voter_ns=(8,))
  assert [r.index for r in pools["solve"]] == [0, 1, 2] and len(pools["planner"]) == 3
  # Vote-table order first (what CA-TTS sends), then the same candidates in another order;
  # a lone candidate has no other order.
  voter = [(r.index, r.candidates, r.truth) for r in pools["voter"]]
  assert voter[0] == (0, ("4", "3", "5"), "3") and voter[2] == (1, ("2",), "2") and len(voter) == 3
  assert voter[1][0] == 0 and sorted(voter[1][1]) == ["3", "4", "5"] and voter[1][1] != ("4", "3", "5")
  # Over many problems the right answer sits at every label of the reordered rows.
  many = {i: samples[0] for i in range(40)}
  pools40 = ed.pools(EXAMPLES[:1] * 40, many, seed=0, voter_ns=(8,))
  assert {r.candidates.index(r.truth) for r in pools40["voter"][1::2]} == {0, 1, 2}
  # ... and never in vote-table order itself (a seeded permutation may be the identity).
  assert all(b.candidates != a.candidates for a, b in zip(pools40["voter"][::2], pools40["voter"][1::2]))
  critic = [(r.index, r.answer, r.correct) for r in pools["critic"]]
  # The first wrong response per distinct answer, up to CRITIC_WRONG of them, then the first right one.
  assert critic == [(0, "4", False), (0, "", False), (0, "3", True), (1, "2", True)]
  one = ed.pools(EXAMPLES[:3], samples, seed=0, voter_ns=(8,), critic_wrong=3)
  assert [(r.answer, r.correct) for r in one["critic"] if r.index == 0] == [
    ("4", 0),
    ("", 0),
    ("5", 0),
    ("3", 1),
  ]
  assert ed.candidates_of(["1", "2"], [False, False]) == (("1", "2"), None)


class FakePolicy:
  """Stands in for the sampling policy: each sample is some problem's reference solution."""

  def __init__(self, examples):
    self.examples, self.calls, self.seeds = examples, [], []

  def example_prompt(self, ex, template=None):
    return ex["id"], []

  def sample(self, prompts, images, *, seeds, n, temperature, max_new_tokens):
    self.calls.append(list(prompts))
    self.seeds += list(seeds)
    by_id = {ex["id"]: k for k, ex in enumerate(self.examples)}
    texts = [
      [self.examples[(by_id[p] + j) % len(self.examples)]["metadata"]["solution"] for j in range(n)]
      for p in prompts
    ]
    return type("Out", (), {"texts": texts, "scores": {"confidence": np.full((len(prompts), n), 0.5)}})()


def test_samples_are_drawn_once(tmp_path):
  path = tmp_path / "samples.jsonl"
  kw = dict(n=3, temperature=0.7, max_new_tokens=8, seed=0, batch=2)
  first = FakePolicy(EXAMPLES)
  expert_sft.draw_samples(first, EXAMPLES[:3], path, **kw)  # a run killed after 3 problems
  assert first.calls == [[EXAMPLES[0]["id"], EXAMPLES[1]["id"]], [EXAMPLES[2]["id"]]]
  before = path.read_text()
  again = FakePolicy(EXAMPLES)
  rows = expert_sft.draw_samples(again, EXAMPLES, path, **kw)
  assert again.calls == [[EXAMPLES[3]["id"], EXAMPLES[4]["id"]], [EXAMPLES[5]["id"]]]  # only the missing
  assert first.seeds + again.seeds == [stable_seed(0, ex["id"]) for ex in EXAMPLES]  # per problem, not batch
  assert path.read_text().startswith(before) and sorted(rows) == list(range(6))
  assert rows[0]["answers"][0] == str(EXAMPLES[0]["answer"]) and rows[0]["correct"][0] is True
  assert expert_sft.draw_samples(None, EXAMPLES, path, **kw) == rows  # nothing left: no policy needed


class Scripted(Expert):
  """Answers each request with the training target of the row it was built from."""

  def __init__(self, replies):
    super().__init__(RetryPolicy(max_retries=0))
    self.replies = replies

  def _send(self, messages, max_tokens, temperature):
    return self.replies[messages[-1]["content"][-1]["text"]]


def test_evaluation_of_an_expert_that_answers_its_targets():
  val = [example(i, "validation") for i in range(6)]
  samples = {}
  for i, ex in enumerate(val):
    truth, wrong = str(ex["answer"]), a_wrong_answer(ex)
    answers = [wrong, truth, truth, wrong, wrong, truth] if i % 2 else [truth] * 6
    samples[i] = samples_of(answers, [a == truth for a in answers])
  cfg = synthetic_expert.get_config("tiny").eval
  cfg.voter_n = 4  # problems 1, 3, 5: majority picks the wrong answer (2 of 4)
  items = expert_eval.requests(val, samples, cfg)
  replies = {}
  for i, (item, ex) in enumerate(zip(items, val)):
    s = samples[i]
    rows = {
      "planner": ed.Row("planner", i),
      "voter": ed.Row("voter", i, tuple(item["candidates"]), item["truth"]),
      "critic": ed.Row("critic", i, response=s["texts"][0], answer=s["answers"][0], correct=s["correct"][0]),
    }
    for role, ask in item["asks"].items():
      replies[ask.messages[-1]["content"][-1]["text"]] = ed.target_for(rows[role], ex)
  summary, rows = expert_eval.roles(Scripted(replies), items)
  assert summary["parse_rate"] == {"planner": 1.0, "voter": 1.0, "critic": 1.0}
  assert summary["planner"]["expected_order"] == 1.0
  v = summary["voter"]
  assert v["accuracy"] == 1.0 and v["majority_accuracy"] == 0.5 and v["contested"] == 3
  assert v["accuracy_contested"] == 1.0 and v["majority_accuracy_contested"] == 0.0
  c = summary["critic"]
  assert c["names_truth"] == 1.0 and c["verdict_on_right"] == 1.0 and c["verdict_on_wrong"] == 1.0
  assert c["wrong_responses"] == 3

  broken = Scripted({k: "no idea" for k in replies})
  summary, _ = expert_eval.roles(broken, items)
  assert summary["parse_rate"] == {"planner": 0.0, "voter": 0.0, "critic": 1.0}  # any text is a critique
  assert summary["planner"]["expected_order"] is None and summary["critic"]["names_truth"] == 0.0


def test_a_short_run_resumes_without_drawing_again_and_exports(tmp_path, monkeypatch):
  c = synthetic_expert.get_config("tiny")
  c.data.data_dir = str(tmp_path / "tfds")
  c.eval.size = 0  # the evaluation is tested above
  c.train.update(
    steps=1, save_every=1, cycle=("mixed",), batches={"mixed": dict(solve=1, planner=1, voter=1, critic=1)}
  )
  fakes = []

  def fake_policy(path):
    fakes.append(FakePolicy([example(i) for i in range(c.data.problems)]))
    return fakes[-1]

  monkeypatch.setattr(expert_sft, "load_policy", fake_policy)
  out = tmp_path / "run"
  first = expert_sft.train(c, out)
  assert len(fakes) == 1 and first["resumed_from"] == 0
  assert c.policy.problems <= first["rows"]["voter"] <= 2 * c.policy.problems  # + reordered rows
  drawn = (out / "samples.jsonl").read_text()
  init = (out / "init" / "model.safetensors").read_bytes()

  again = expert_sft.train(c, out)  # the run was complete: nothing drawn or trained again
  assert len(fakes) == 1 and (out / "samples.jsonl").read_text() == drawn
  assert again["resumed_from"] == 1 and (out / "train.jsonl").read_text().count("\n") == 1

  expert = Policy.from_pretrained(out / "final")
  assert (out / "final" / "model.safetensors").read_bytes() != init  # trained weights
  assert expert.processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in expert.stop_ids()
  prompt, images = SelfExpert(expert).render(ed.ask_for(ed.Row("planner", 0), example(0)).messages)
  assert prompt.startswith("<|im_start|>system\n" + PLANNER_SYSTEM) and len(images) == 1
  assert expert_sft.bundle_mb(out / "final") < 20

  c.policy.n = 4  # the cached samples were drawn with n = 8
  with pytest.raises(ValueError, match="policy.n"):
    expert_sft.train(c, out)


def test_each_kind_reads_its_pool_in_seeded_epochs():
  """A step's rows depend on its number only (so a resumed run reads what the whole run
  would); each kind goes through its whole pool before repeating a row."""
  c = synthetic_expert.get_config("full")
  c.train.update(
    cycle=("solve", "roles"), batches=dict(solve=dict(solve=32), roles=dict(voter=14, critic=14, planner=4))
  )
  pools = {
    k: [ed.Row(k, i) for i in range(n)] for k, n in dict(solve=40, planner=40, voter=30, critic=50).items()
  }
  steps = [expert_sft.step_rows(c, pools, s) for s in range(6)]
  assert steps[3] == expert_sft.step_rows(c, pools, 3)
  assert [len(rows) for rows in steps] == [32, 32] * 3
  assert {r.kind for r in steps[0]} == {"solve"} and {r.kind for r in steps[1]} == {
    "voter",
    "critic",
    "planner",
  }
  voter = [r.index for rows in steps for r in rows if r.kind == "voter"]  # 14 a roles step: 42
  assert sorted(voter[:30]) == list(range(30)) and len(set(voter[30:])) == 12


def test_prompt_lengths_count_the_rendered_requests(policy):
  val = [example(i, "validation") for i in range(3)]
  samples = {
    i: samples_of([str(ex["answer"])], [True], [ex["metadata"]["solution"]]) for i, ex in enumerate(val)
  }
  items = expert_eval.requests(val, samples, synthetic_expert.get_config("tiny").eval)
  render = SelfExpert(policy).render
  lengths = expert_eval.prompt_tokens(SelfExpert(policy), items)
  for role in expert_eval.ROLES:
    each = [
      len(policy.processor.encode(*map(list, zip(render(it["asks"][role].messages)))).ids[0]) for it in items
    ]
    assert lengths[role] == {"min": min(each), "mean": pytest.approx(np.mean(each)), "max": max(each)}
    user_text = [
      policy.processor.tokenize(it["asks"][role].messages[-1]["content"][-1]["text"]) for it in items
    ]
    assert all(n > len(t) for n, t in zip(each, user_text))  # + system turn, template and image tokens


def test_the_bundled_expert_meets_the_bundling_rule():
  """checkpoints/synthetic_expert is bundled only at <= 20 MB with every role's replies parsed
  at >= 95% on validation; it loads as a policy and renders the roles' requests."""
  bundle = Path(__file__).parents[1] / "checkpoints" / "synthetic_expert"
  record = json.loads((bundle / "training.json").read_text())
  assert expert_sft.bundle_mb(bundle) <= 20
  assert min(record["eval"]["parse_rate"].values()) >= 0.95 and record["eval"]["problems"] >= 256
  assert record["config"]["eval"]["split"] == "validation" and record["command"].startswith(
    "python -m train.expert"
  )
  expert = Policy.from_pretrained(bundle)
  prompt, _ = SelfExpert(expert).render(ed.ask_for(ed.Row("planner", 0), example(0)).messages)
  assert len(expert.processor.tokenize(prompt)) < 200  # the roles' words are in its vocabulary
