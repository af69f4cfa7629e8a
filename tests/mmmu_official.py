"""MMMU's official open-answer check (MMMU-Benchmark/MMMU eval/eval_utils.py:
parse_open_response, then eval_open), restated to set its verdicts beside ours in
test_answers.py. As the original: the response is lower-cased before it is split into
sentences on ". " followed by a capital (so only line breaks split it); every sentence
contributes its shortest tail after an indicator word ("=" too in the last); without any,
the whole response is the one candidate; every number in the candidates is a candidate too;
a text reference is accepted when it occurs anywhere in a candidate, a numeric one when a
candidate number equals it to 2 decimals."""

from __future__ import annotations

import re

INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def numbers(text: str) -> list[float]:
  with_commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
  scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
  simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])", text)
  return [float(n.replace(",", "")) for n in with_commas + scientific + simple]


def normalized(value) -> list:
  if isinstance(value, float):
    return [round(value, 2)]
  text = value.strip()
  try:
    return [round(float(text.replace(",", "")), 2)]
  except ValueError:
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def candidates(response: str) -> list:
  text = response.strip().strip(".").lower()
  sentences = re.split(r"\.\s(?=[A-Z])|\n", text)
  keys = []
  for k, sentence in enumerate(sentences):
    indicators = INDICATORS + (("=",) if k == len(sentences) - 1 else ())
    tails = [sentence.split(i)[-1].strip() for i in indicators if i in sentence]
    shortest = min(tails, key=len) if tails else None
    if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
      keys.append(shortest)
  keys = keys or [text]
  found = keys + [n for key in keys for n in numbers(key)]
  return [c for value in found for c in normalized(value)]


def correct(response: str, gold: str) -> bool:
  answers = normalized(gold)
  for candidate in candidates(response):
    if isinstance(candidate, str):
      if any(isinstance(a, str) and a in candidate for a in answers):
        return True
    elif candidate in answers:
      return True
  return False
