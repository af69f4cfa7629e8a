"""Training rows for a from-scratch CA-TTS Expert: the Planner's, Voter's and Critic's requests
built by the roles' own functions (`plan_ask`, `vote_ask`, `critique_ask` with prompts "ours"),
so a training prompt is exactly what CA-TTS sends, rendered as `SelfExpert.render` renders it
(the chat template of the Expert's processor, images decoded from the request's data URLs).

  rows = pools(examples, samples, seed=0)          # {"solve": [...], "planner": [...], ...}
  prompt, images, target = materialise(render, policy, examples, rows["voter"][0])

The targets, from the synthetic train split's ground truth and reference reasoning:
- Planner: all three modules in a fixed order per task type (PLANNER_ORDERS; a choice, not
  measured): counting shapes and reading bars fail by misreading the image, so the visual
  self-check comes second; the bricks task's three-step reasoning is where a critique helps,
  so reflection comes second there (the paper's default order).
- Voter: the candidates are the distinct answers of the policy's first n samples in the order
  they first appear (what CA-TTS's vote table lists) and, when there are several, the same
  candidates again in a seeded other order (in vote-table order the right one is mostly
  first, and a Voter trained on that order alone put 0.9 on A1 whatever it found). The reply
  solves first, as the prompt asks ("Solve the question yourself ..., then give the
  probability"): the reference reasoning and its answer, then JSON that gives every label
  a floor of (1 - VOTER_MASS) / n and, last, the Expert's own answer by its text VOTER_MASS:
  `... 12 - 10 = 2. The answer is 2. {"A1": 0.05, "A2": 0.05, "2": 0.9}`. The Voter's reader
  lays the answer's mass over its candidate's label (a candidate named twice keeps the later
  value) and drops it when it is no candidate, so the reply reads as 0.9 on the Expert's
  answer when it stands among the candidates and as uniform ("none of these") when not.
  The reply never has to find the label of a candidate, which this small Expert does not
  learn: trained to write the label (`{"A1": 0.1, "A2": 0.9}`, runs 1-7) it put the mass on
  its own answer in 36% of the calls where it stood; trained to copy each candidate's line
  as the key first (run 8) it copied the lines wrong; keyed by every candidate's text (run 4)
  it wrote its own answer as every key (docs/experiments/synthetic_expert.md).
- Critic (per problem, its first right response and up to CRITIC_WRONG wrong ones with distinct
  answers: with one of each, 61% of the rows were right ones, and copying the response was the
  cheap fit): the reference reasoning first (the Expert checks the image itself), then the
  verdict: for a wrong response `... The response reads "<its first sentence that the
  reference does not have>", which is wrong; the answer is X, not Y.`, for a right one
  `... The response is right; the answer is X.`
- Solve: the policy's own prompt (the benchmark template) -> the reference solution, so the
  Expert learns to perceive as a plain solver too.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from catts_jax import data
from catts_jax.data import synthetic
from catts_jax.tts.critic import critique_ask
from catts_jax.tts.expert import Ask
from catts_jax.tts.planner import MODULES, SELF_CONSISTENCY, SELF_REFLECTION, VISUAL_SELF_CHECK, plan_ask
from catts_jax.tts.voter import labels, vote_ask

KINDS = ("solve", "planner", "voter", "critic")
PLANNER_ORDERS = {
  "count": (SELF_CONSISTENCY, VISUAL_SELF_CHECK, SELF_REFLECTION),
  "bars": (SELF_CONSISTENCY, VISUAL_SELF_CHECK, SELF_REFLECTION),
  "bricks": MODULES,
}
VOTER_MASS = 0.9  # on the true candidate when it is among several
CRITIC_WRONG = 2  # wrong responses critiqued per problem (distinct answers)
_BOXED_TAIL = re.compile(r"\s*The answer is \\boxed\{[^{}]*\}\.?\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclasses.dataclass(frozen=True)
class Row:
  """One training row, before rendering: `kind`, the train problem it is about and what the
  request carries (the Voter's candidates, the Critic's response)."""

  kind: str
  index: int  # position of the problem in its split
  candidates: tuple[str, ...] = ()
  truth: str | None = None  # the right candidate, None when none is right
  response: str = ""
  answer: str = ""  # the response's extracted answer
  correct: bool = False  # the response's grade


def problem_inputs(example: Mapping[str, Any], template: str | None = None) -> tuple[str, list]:
  """(question, images) as CA-TTS hands them to the Expert: the user-turn text of the
  benchmark's template (`Problem.question`) and the images in prompt order."""
  question = data.prompt_for(example, template)
  images = data.decode_images(example)
  content = data.chat_content(example, question)
  return question, [images[c["index"]] for c in content if c["type"] == "image"]


def reasoning(example: Mapping[str, Any]) -> str:
  """The reference solution without its closing "The answer is \\boxed{X}."."""
  return _BOXED_TAIL.sub("", example["metadata"]["solution"]).strip()


def planner_target(example: Mapping[str, Any]) -> str:
  return json.dumps({"order": list(PLANNER_ORDERS[example["category"]])})


def label_floor(n: int) -> float:
  """Each label's probability in a Voter target over n candidates (at least 0.01)."""
  return max(round((1 - VOTER_MASS) / n, 2), 0.01)


def voter_target(candidates: Sequence[str], answer: str, solution: str = "") -> str:
  """`solution` (the reasoning, when given), then JSON: every label its floor, and last the
  Expert's own `answer` by its text (see the module docstring)."""
  votes = {label: label_floor(len(candidates)) for label in labels(len(candidates))}
  votes[answer] = VOTER_MASS
  text = json.dumps(votes)
  return f"{solution} {text}" if solution else text


def solved(example: Mapping[str, Any]) -> str:
  """The reference reasoning and its answer: `... 16 - 11 = 5. The answer is 5.`."""
  return f"{reasoning(example)} The answer is {example['answer']}."


def wrong_sentence(response: str, reference: str) -> str | None:
  """The response's first sentence that the reference reasoning does not contain."""
  have = {s.strip() for s in _SENTENCE.split(reference) if s.strip()}
  for s in _SENTENCE.split(response.strip()):
    s = s.strip()
    if s and s not in have and not s.startswith("The answer is"):
      return s
  return None


def critic_target(example: Mapping[str, Any], response: str, answer: str, correct: bool) -> str:
  """The critique of `response` (graded `correct`, extracted `answer`): the reference
  reasoning, then the verdict naming the right answer."""
  ref, truth = reasoning(example), str(example["answer"])
  if correct:
    return f"{ref} The response is right; the answer is {truth}."
  quoted = wrong_sentence(response, ref)
  where = f'The response reads "{quoted}", which is wrong' if quoted else "The response is wrong"
  instead = f", not {answer}" if answer and answer != truth else ""
  return f"{ref} {where}; the answer is {truth}{instead}."


def ask_for(row: Row, example: Mapping[str, Any], template: str | None = None) -> Ask:
  """The request CA-TTS sends for `row` (prompts "ours"; the paper's Planner: order_all)."""
  question, images = problem_inputs(example, template)
  if row.kind == "planner":
    return plan_ask(question, images, order_all=True)
  if row.kind == "voter":
    return vote_ask(question, images, list(row.candidates))
  if row.kind == "critic":
    return critique_ask(question, images, row.response, answer=row.answer)
  raise ValueError(f"row kind {row.kind!r} has no Expert request")


def target_for(row: Row, example: Mapping[str, Any]) -> str:
  if row.kind == "solve":
    return example["metadata"]["solution"]
  if row.kind == "planner":
    return planner_target(example)
  if row.kind == "voter":
    return voter_target(row.candidates, str(example["answer"]), solved(example))
  if row.kind == "critic":
    return critic_target(example, row.response, row.answer, row.correct)
  raise ValueError(f"unknown row kind {row.kind!r}")


Render = Callable[[list], tuple[str, list]]  # SelfExpert.render: messages -> (prompt, images)


def materialise(
  render: Render, policy, example: Mapping[str, Any], row: Row, template: str | None = None
) -> tuple[str, list, str]:
  """(rendered prompt, images, target text) of `row`: a role's request through `render`, a
  solve row through the policy's own prompt (`Policy.example_prompt`)."""
  if row.kind == "solve":
    prompt, images = policy.example_prompt(example, template)
  else:
    prompt, images = render(ask_for(row, example, template).messages)
  return prompt, images, target_for(row, example)


def candidates_of(answers: Sequence[str], correct: Sequence[bool]) -> tuple[tuple[str, ...], str | None]:
  """The distinct answered answers in first-appearance order (`VoteTable.weights()`), and the
  one graded correct (None if none is)."""
  cands = tuple(dict.fromkeys(a for a in answers if a))
  truth = next((a for a, c in zip(answers, correct) if a and c), None)
  return cands, truth


def pools(
  examples: Sequence[Mapping[str, Any]],
  samples: Mapping[int, Mapping[str, Any]],
  *,
  seed: int,
  voter_ns: Sequence[int] = (2, 4, 8),
  critic_wrong: int = CRITIC_WRONG,
) -> dict[str, list[Row]]:
  """Every training row by kind. `samples`: problem index -> the policy's sampled responses
  ({"texts", "answers", "correct"}); problems without samples get solve and planner rows
  only. Per sampled problem: one Voter row over the first n samples (n from `voter_ns`,
  seeded per problem) unless none answered, and one over the same candidates in a seeded
  other order when there are several, and a Critic row for its first right response
  and for each of its first `critic_wrong` wrong ones with distinct answers."""
  out: dict[str, list[Row]] = {k: [] for k in KINDS}
  for i, _ in enumerate(examples):
    out["solve"].append(Row("solve", i))
    out["planner"].append(Row("planner", i))
    s = samples.get(i)
    if not s:
      continue
    rng = np.random.default_rng([seed, i])
    n = int(rng.choice(voter_ns))
    cands, truth = candidates_of(s["answers"][:n], s["correct"][:n])
    if cands:
      out["voter"].append(Row("voter", i, candidates=cands, truth=truth))
    if len(cands) > 1:  # the same candidates in another order: the label follows the answer
      order = rng.permutation(len(cands))
      if (order == np.arange(len(cands))).all():
        order = np.roll(order, 1)
      out["voter"].append(Row("voter", i, candidates=tuple(cands[k] for k in order), truth=truth))
    wrong: dict[str, int] = {}  # answer -> its first wrong response
    right: list[int] = []
    for j, text in enumerate(s["texts"]):
      if not text.strip():
        continue
      if s["correct"][j]:
        right = right or [j]
      elif len(wrong) < critic_wrong:
        wrong.setdefault(s["answers"][j], j)
    for j in [*wrong.values(), *right]:
      text, answer, correct = s["texts"][j], s["answers"][j], bool(s["correct"][j])
      out["critic"].append(Row("critic", i, response=text, answer=answer, correct=correct))
  return out


def corpus(examples: Sequence[Mapping[str, Any]], template: str | None = None) -> list[str]:
  """Text for the Expert's tokenizer: the task text (synthetic.corpus), the three roles'
  system and user texts as CA-TTS sends them, and their replies, over `examples` (each
  critiqued on its own reference solution and on one with another answer)."""
  # The chat template's role names, so that "system" / "user" / "assistant" are one token each.
  texts = synthetic.corpus("reasoning") + ["You are a helpful assistant."] + ["system user assistant"] * 4
  for i, ex in enumerate(examples):
    truth = str(ex["answer"])
    other = examples[(i + 1) % len(examples)]
    wrong = str(other["answer"]) if str(other["answer"]) != truth else ""
    rows = [
      Row("planner", i),
      Row("voter", i, candidates=(truth, wrong) if wrong else (truth,), truth=truth),
      Row("critic", i, response=ex["metadata"]["solution"], answer=truth, correct=True),
      Row("critic", i, response=other["metadata"]["solution"], answer=wrong, correct=not wrong),
    ]
    for row in rows:
      for message in ask_for(row, ex, template).messages:
        content = message["content"]
        texts += (
          [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]
        )
      texts.append(target_for(row, ex))
  return texts
