"""The trained Expert on validation problems, asked exactly as CA-TTS asks it: the requests of
`plan_ask` (order_all, the paper's Planner), `vote_ask` and `critique_ask`, answered by
`SelfExpert` (the same chat template and decode as `--expert self`) and read by each role's own
reader (`Ask.read`).

  summary = evaluate(expert, policy, examples, samples, cfg.eval, out / "eval.jsonl")

Per role: the parse rate (a Planner reply that falls back to the default order, a Voter reply
with no usable probability or an empty critique is a failure). Voter: over the candidates of
the policy's first `voter_n` samples, how often its most probable candidate is right, against
the policy's majority vote on the same samples (ties to the first answer drawn, as the vote
table ranks them); on the problems whose truth is among the candidates, and on those with
more than one candidate. Critic, on the policy's first sample of each problem: how often the
critique's last "the answer is X" names the truth, and how often its verdict ("The response
is right") agrees with the grade. Both models' greedy solving accuracy, overall and per task,
and the requests' lengths in the Expert's tokens.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from catts_jax import runs
from catts_jax.eval import greedy
from catts_jax.policy import Policy
from catts_jax.rl import expert_data
from catts_jax.tts.critic import critique_ask
from catts_jax.tts.expert import Expert
from catts_jax.tts.planner import plan_ask
from catts_jax.tts.self_expert import SelfExpert
from catts_jax.tts.voter import vote_ask

ROLES = ("planner", "voter", "critic")
_NAMED = re.compile(r"the answer is ([^\s,.;]+)", re.IGNORECASE)


def majority(answers: Sequence[str]) -> str | None:
  """The most frequent answered answer; ties go to the one drawn first."""
  counts = collections.Counter(a for a in answers if a)
  return max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None


def named_answer(critique: str) -> str | None:
  """The answer a critique names last ("... the answer is X"), or None."""
  found = _NAMED.findall(critique)
  return found[-1] if found else None


def requests(examples, samples, cfg, template=None) -> list[dict[str, Any]]:
  """Per problem its three requests (as CA-TTS builds them) and what grades their replies."""
  out = []
  for i, ex in enumerate(examples):
    question, images = expert_data.problem_inputs(ex, template)
    s = samples[i]
    cands, truth = expert_data.candidates_of(s["answers"][: cfg.voter_n], s["correct"][: cfg.voter_n])
    m = cfg.max_tokens
    item = {
      "id": ex["id"],
      "task": ex["category"],
      "candidates": list(cands),
      "truth": truth,
      "majority": majority(s["answers"][: cfg.voter_n]),
      "response_correct": bool(s["correct"][0]),
      "answer": str(ex["answer"]),
      "asks": {
        "planner": plan_ask(question, images, order_all=True, max_tokens=m.planner),
        "critic": critique_ask(question, images, s["texts"][0], answer=s["answers"][0], max_tokens=m.critic),
      },
    }
    if cands:
      item["asks"]["voter"] = vote_ask(question, images, list(cands), max_tokens=m.voter)
    out.append(item)
  return out


def _rate(values: Sequence[bool]) -> float | None:
  return float(np.mean(values)) if len(values) else None


def solving(model: Policy, examples, max_new_tokens: int, template=None) -> dict[str, Any]:
  rows = greedy.greedy_eval(model, examples, "synthetic", max_new_tokens=max_new_tokens, template=template)
  tasks = sorted({ex["category"] for ex in examples})
  by_task = {
    task: _rate([r["correct"] for r, ex in zip(rows, examples) if ex["category"] == task]) for task in tasks
  }
  return {"accuracy": greedy.summary(rows)["accuracy"], "by_task": by_task, "n": len(rows)}


def roles(expert: Expert, items: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(summary, one row per problem) of `expert`'s replies to the `requests` items, all asked
  in one `ask_many` (the `self` Expert: batched decodes)."""
  flat = [
    (i, role, item["asks"][role]) for i, item in enumerate(items) for role in ROLES if role in item["asks"]
  ]
  replies = expert.ask_many([ask for _, _, ask in flat])
  rows = [{k: v for k, v in item.items() if k != "asks"} for item in items]
  for (i, role, _), reply in zip(flat, replies):
    row = rows[i]
    if isinstance(reply, Exception):
      row[role] = {"parsed": False, "error": str(reply)[:200]}
      continue
    value, call = reply
    if role == "planner":
      expected = list(expert_data.PLANNER_ORDERS[row["task"]])
      row[role] = {
        "parsed": not call.fallback,
        "order": value,
        "expected": not call.fallback and value == expected,
      }
    elif role == "voter":
      best = max(row["candidates"], key=lambda c: value[c])  # ties: the first listed
      row[role] = {"parsed": True, "probs": value, "choice": best}
    else:
      verdict = "response is right" in value.lower()
      row[role] = {"parsed": True, "critique": value, "named": named_answer(value), "says_right": verdict}

  asked = {role: [r for r in rows if role in r] for role in ROLES}
  voted = [r for r in asked["voter"] if r["voter"]["parsed"]]
  with_truth = [r for r in voted if r["truth"] is not None]
  contested = [r for r in with_truth if len(r["candidates"]) > 1]
  critiques = [r for r in asked["critic"] if r["critic"]["parsed"]]
  summary = {
    "problems": len(rows),
    "parse_rate": {role: _rate([r[role]["parsed"] for r in asked[role]]) for role in ROLES},
    "planner": {
      "expected_order": _rate([r["planner"]["expected"] for r in asked["planner"] if r["planner"]["parsed"]])
    },
    "voter": {
      "asked": len(asked["voter"]),
      "truth_among_candidates": len(with_truth),
      "contested": len(contested),
      "accuracy": _rate([r["voter"]["choice"] == r["truth"] for r in with_truth]),
      "majority_accuracy": _rate([r["majority"] == r["truth"] for r in with_truth]),
      "accuracy_contested": _rate([r["voter"]["choice"] == r["truth"] for r in contested]),
      "majority_accuracy_contested": _rate([r["majority"] == r["truth"] for r in contested]),
    },
    "critic": {
      "names_truth": _rate([r["critic"]["named"] == r["answer"] for r in critiques]),
      "verdict_on_right": _rate([r["critic"]["says_right"] for r in critiques if r["response_correct"]]),
      "verdict_on_wrong": _rate(
        [not r["critic"]["says_right"] for r in critiques if not r["response_correct"]]
      ),
      "wrong_responses": sum(not r["response_correct"] for r in critiques),
    },
  }
  return summary, rows


def prompt_tokens(expert: SelfExpert, items: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """Per role, the rendered requests' lengths in the Expert's tokens (image tokens included):
  min, mean and max."""
  out = {}
  for role in ROLES:
    rendered = [expert.render(item["asks"][role].messages) for item in items if role in item["asks"]]
    if not rendered:
      continue
    lengths = [len(ids) for ids in expert.policy.processor.encode(*map(list, zip(*rendered))).ids]
    out[role] = {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)}
  return out


def evaluate(
  expert: Policy,
  policy: Policy,
  examples: Sequence[Mapping[str, Any]],
  samples: Mapping[int, Mapping[str, Any]],
  cfg,
  path: pathlib.Path | None = None,
  template: str | None = None,
) -> dict[str, Any]:
  """The summary described in the module docstring; one row per problem to `path` (JSONL)."""
  items = requests(examples, samples, cfg, template)
  self_expert = SelfExpert(expert, batch=cfg.batch)
  summary, rows = roles(self_expert, items)
  summary["voter"]["samples"] = cfg.voter_n
  summary["prompt_tokens"] = prompt_tokens(self_expert, items)
  summary["solve"] = {
    "expert": solving(expert, examples, cfg.solve_max_new_tokens, template),
    "policy": solving(policy, examples, cfg.solve_max_new_tokens, template),
  }
  if path is not None:
    runs.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
  return summary
