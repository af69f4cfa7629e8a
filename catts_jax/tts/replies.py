"""Reading a chat model's JSON reply leniently, for the Expert's roles (voter.py, critic.py,
planner.py).

  extract_json('Reasoning... {"A1": 0.7, \'A2\': 0.3,} done.')  # [{"A1": 0.7, "A2": 0.3}]

Models wrap JSON in code fences and prose, write Python literals (single quotes, trailing
commas) or bare words (`[SC, SR]`); every balanced `{...}` / `[...]` span is tried as JSON,
then as a Python literal, then with bare words quoted.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_FENCE = re.compile(r"```[a-zA-Z]*")
_BARE_WORD = re.compile(r"(?<=[\[{,:])\s*([A-Za-z_][\w\- .]*?)\s*(?=[,\]}:])")


def without_fences(text: str, sep: str = "\n") -> str:
  """`text` with each Markdown code fence (```json, ```) replaced by `sep`."""
  return _FENCE.sub(sep, text)


def _segments(text: str) -> list[str]:
  """Balanced {...} / [...] spans in `text`, outermost first, in order of appearance."""
  out, i = [], 0
  while i < len(text):
    if text[i] not in "{[":
      i += 1
      continue
    stack, quote, j = [], None, i
    while j < len(text):
      c = text[j]
      if quote:
        if c == "\\":
          j += 1
        elif c == quote:
          quote = None
      elif c in "\"'" and (c == '"' or not text[j - 1].isalnum()):  # not an apostrophe
        quote = c
      elif c in "{[":
        stack.append("}" if c == "{" else "]")
      elif c in "}]":
        if not stack or stack.pop() != c:
          break
        if not stack:
          break
      j += 1
    if j < len(text) and not stack and text[j] in "}]":
      out.append(text[i : j + 1])
      i = j + 1
    else:
      i += 1  # unbalanced (e.g. truncated output): look for spans inside it
  return out


def _loads(segment: str) -> Any:
  """JSON, else a Python literal (single quotes, trailing commas), else with bare words quoted."""
  try:
    return json.loads(segment)
  except ValueError:
    pass
  for candidate in (segment, _BARE_WORD.sub(lambda m: json.dumps(m.group(1)), segment)):
    try:
      return ast.literal_eval(candidate)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
      continue
  return None


def extract_json(text: str) -> list[Any]:
  """The JSON-like values found in a model's reply, last first (a final answer usually
  follows any examples or reasoning). Code fences and prose around them are ignored."""
  values = [_loads(s) for s in _segments(without_fences(text))]
  return [v for v in reversed(values) if isinstance(v, dict | list)]
