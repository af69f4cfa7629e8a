"""The Expert as Voter: how likely each candidate answer is to be right.

  probs, call = vote(expert, question, images, ["12", "15"])  # {"12": 0.8, "15": 0.2}

The candidates are listed under labels A1, A2, ... and the expert replies with a probability
per label. The reply is read leniently (`parse_votes`): JSON in its many shapes (a dict, a
list in label order, a list of {label, probability} dicts or of pairs), percentages, keys
that are a candidate's text, or `A1: 0.7` lines; unknown keys are dropped, a candidate named
twice (by its label, then by its text) keeps the later value, and the rest is renormalised.
A reply with no usable probability is an ExpertError with the reply's start.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from PIL import Image

from catts_jax.tts import release_prompts
from catts_jax.tts.expert import Ask, Expert, ExpertCall, shorten, system_message, user_message
from catts_jax.tts.release_prompts import check_style
from catts_jax.tts.replies import extract_json, without_fences

VOTER_SYSTEM = "You are a careful expert who checks answers to questions about images."
VOTER_PROMPT = """Question:
{question}

Candidate answers:
{candidates}

Solve the question yourself using the image(s), then give the probability that each candidate is the correct answer. The probabilities sum to 1.
Reply with JSON only, mapping each label to its probability, e.g. {example}"""
CANDIDATE_MAX_CHARS = 200
_PROB_KEYS = ("probabilities", "probability", "probs", "scores", "votes", "distribution", "answers")
_NAME_KEYS = ("label", "candidate", "answer", "id", "option", "choice", "name")
_VALUE_KEYS = ("probability", "prob", "p", "score", "confidence", "weight", "value")
_LABEL = re.compile(r"(?:answer|candidate|option)?\s*#?\s*a(\d+)", re.IGNORECASE)
_LABEL_INSIDE = re.compile(r"\bA(\d+)\b")
# "key: 0.7" / "key = 70%" / "key - 0.7", the number ending its clause ("A1: 12 is wrong" is no vote).
_PAIR = re.compile(
  r"(?P<key>[^\n,;:=]+?)\s*(?::|=|->|\s[-\u2013\u2014]\s)\s*(?P<value>\d+(?:\.\d+)?(?:[eE]-?\d+)?)\s*(?P<pct>%)?"
  r"(?=[ \t]*(?:$|[,;(]))",
  re.MULTILINE,
)


def labels(n: int) -> list[str]:
  return [f"A{i + 1}" for i in range(n)]


def _prob(value: Any) -> float | None:
  """A non-negative finite number from 0.7, "0.7", "70%"; None otherwise."""
  if isinstance(value, bool):
    return None
  scale = 1.0
  if isinstance(value, str):
    value = value.strip()
    if value.endswith("%"):
      value, scale = value[:-1], 0.01
  try:
    p = float(value) * scale
  except (TypeError, ValueError):
    return None
  return p if math.isfinite(p) and p >= 0 else None


def _norm(text: str) -> str:
  return " ".join(str(text).split()).casefold()


def _match(key: Any, candidates: Sequence[str]) -> int | None:
  """The candidate a key names: its label (A2), its exact text, or one label inside it."""
  key = str(key).strip().strip("\"'`*_()[]<>. ").strip()
  m = _LABEL.fullmatch(key)
  if m and 1 <= int(m.group(1)) <= len(candidates):
    return int(m.group(1)) - 1
  texts = [_norm(c) for c in candidates]
  if _norm(key) in texts:
    return texts.index(_norm(key))
  inside = {int(x) for x in _LABEL_INSIDE.findall(key)}
  if len(inside) == 1 and 1 <= (i := inside.pop()) <= len(candidates):
    return i - 1
  return None


def _pairs(obj: Any, n: int) -> list[tuple[Any, Any]]:
  """(key, value) pairs from a parsed reply: a dict, a list of numbers in label order, a
  list of {label, probability} dicts or of [label, probability] pairs."""
  if isinstance(obj, dict):
    for k, v in obj.items():
      if str(k).lower() in _PROB_KEYS and isinstance(v, dict | list):
        return _pairs(v, n)
    return list(obj.items())
  if not isinstance(obj, list):
    return []
  if len(obj) == n and all(_prob(v) is not None for v in obj):
    return list(zip(labels(n), obj))
  out = []
  for item in obj:
    if isinstance(item, dict):
      lower = {str(k).lower(): v for k, v in item.items()}
      name = next((lower[k] for k in _NAME_KEYS if k in lower), None)
      value = next((lower[k] for k in _VALUE_KEYS if k in lower), None)
      if name is not None and value is not None:
        out.append((name, value))
      elif len(item) == 1:
        out.extend(item.items())
    elif isinstance(item, list | tuple) and len(item) == 2:
      out.append(tuple(item))
  return out


def _distribution(pairs: Sequence[tuple[Any, Any]], candidates: Sequence[str]) -> list[float] | None:
  weights, found = [0.0] * len(candidates), False
  for key, value in pairs:
    if isinstance(value, dict):  # {"A1": {"probability": 0.7}}
      value = next((v for k, v in value.items() if str(k).lower() in _VALUE_KEYS), None)
    i, p = _match(key, candidates), _prob(value)
    if i is not None and p is not None:
      weights[i], found = p, True
  total = sum(weights)
  if not found or not total > 0 or not math.isfinite(total):
    return None
  return [w / total for w in weights]


def parse_votes(text: str, candidates: Sequence[str]) -> dict[str, float] | None:
  """The expert's probability per candidate (all candidates, renormalised; unknown keys
  dropped, unmentioned candidates 0), or None when nothing usable is found."""
  for value in extract_json(text):
    probs = _distribution(_pairs(value, len(candidates)), candidates)
    if probs is not None:
      return dict(zip(candidates, probs))
  pairs = [(m["key"], m["value"] + (m["pct"] or "")) for m in _PAIR.finditer(without_fences(text))]
  probs = _distribution(pairs, candidates)
  return None if probs is None else dict(zip(candidates, probs))


def vote_ask(
  question: str,
  images: Sequence[Image.Image],
  candidates: Sequence[str],
  *,
  max_tokens: int = 512,
  temperature: float = 0.0,
  style: str = "ours",
) -> Ask:
  """The Voter's request: the probability that each unique candidate answer is right (sums
  to 1); a reply with no usable probabilities is an ExpertError. `style` "release": the
  release's prompt (candidates as a list, a bare probability list back)."""
  candidates = list(dict.fromkeys(str(c) for c in candidates))
  if not candidates:
    raise ValueError("vote needs at least one candidate answer")
  if check_style(style) == "release":
    candidates.sort()  # the release lists sorted(set(answers)); a bare list reply follows it

  def read(expert: Expert, text: str, call: ExpertCall) -> tuple[dict[str, float], ExpertCall]:
    probs = parse_votes(text, candidates)
    if probs is None:
      raise expert.unusable(
        call, "unparseable voter output (no positive probability for any candidate)", text
      )
    return probs, call

  if style == "release":
    text = release_prompts.VOTER.format(options_list=str(candidates))
    messages = [user_message(f"{text}\n\n{release_prompts.VOTER_QUESTION.format(question=question)}", images)]
  else:
    listed = "\n".join(
      f"{label}: {shorten(c, CANDIDATE_MAX_CHARS)}" for label, c in zip(labels(len(candidates)), candidates)
    )
    example = json.dumps({label: round(1 / len(candidates), 2) for label in labels(min(len(candidates), 3))})
    prompt = VOTER_PROMPT.format(question=question, candidates=listed, example=example)
    messages = [system_message(VOTER_SYSTEM), user_message(prompt, images)]
  return Ask("voter", messages, max_tokens, temperature, read)


def vote(expert: Expert, *args, **kwargs) -> tuple[dict[str, float], ExpertCall]:
  """`vote_ask`'s request, answered by `expert`."""
  return expert.ask(vote_ask(*args, **kwargs))
