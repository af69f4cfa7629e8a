"""Finding the answer in a free-form response: \\boxed{}, "the answer is ...", option letters
and option texts. Pure string functions; none raises on any input.

Matching is always whole-token: an option letter must stand alone ("B", "(B)", "B." but not the
B in "Bob"), an option text must not be part of a longer word or number ("1" never matches
inside "10"). Nothing is ever accepted because it is a substring of the reference answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from catts_jax.eval import normalize

MAX_RESPONSE_CHARS = 20000  # answers sit at the end; bound the work on runaway generations
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE = re.compile(
  r"(?:final\s+answer|correct\s+answer|the\s+answer|answer|correct\s+option|correct\s+choice|"
  r"(?:my|the)\s+(?:option|choice))"
  r"\s*(?:\*\*)?\s*(?:is|should\s+be|would\s+be|will\s+be|[:：])\s*(?:\*\*)?\s*",
  re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<!\.)\.(?=\s)|\n")
_LEADING_WORDS = re.compile(r"^(?:(?:option|choice|answer)\s*:?\s*)+", re.IGNORECASE)


def clip(response: str) -> str:
  response = response if isinstance(response, str) else str(response)
  return response[-MAX_RESPONSE_CHARS:]


def boxed(response: str) -> list[str]:
  """Contents of every \\boxed{...} / \\fbox{...} (balanced braces), in order. An unclosed
  box yields the rest of the text. One pass over the text."""
  openers = {m.end() - 1 for m in _BOX.finditer(response)}
  if not openers:
    return []
  stack, spans = [], []
  for i, ch in enumerate(response):
    if ch == "{":
      stack.append(i)
    elif ch == "}" and stack:
      j = stack.pop()
      if j in openers:
        spans.append((j + 1, i))
  spans += [(j + 1, len(response)) for j in stack if j in openers]
  return [response[a:b].strip() for a, b in sorted(spans)]


def after_phrase(response: str) -> str | None:
  """What follows the last "the answer is" / "Answer:" / "the correct option is", up to the
  end of that sentence or line; None without such a phrase."""
  last = None
  for m in _PHRASE.finditer(response):
    last = m
  if last is None:
    return None
  tail = response[last.end() :]
  end = _SENTENCE_END.search(tail)
  span = (tail[: end.start()] if end else tail).strip()
  return span[:-1] if span.endswith(".") and not span.endswith("..") else span


def final_span(response: str) -> tuple[str, str]:
  """(span, how): the last \\boxed{} ("boxed"; a response with several boxes is judged by its
  last one, as Math-Vision's evaluator does), else the text after the last answer phrase
  ("phrase"), else ("", "none")."""
  response = clip(response)
  boxes = [b for b in boxed(response) if b]
  if boxes:
    return boxes[-1], "boxed"
  span = after_phrase(response)
  if span:
    return span, "phrase"
  return "", "none"


def letter_of_span(span: str, letters: Sequence[str], strict: bool = False) -> str | None:
  """The option letter an answer span names: "C", "(C)", "C.", "C)", "Option C", "\\text{C}",
  and unless `strict` (the span is a whole response, not what follows "the answer is") also
  "C: text", "(C) text". None otherwise."""
  s = normalize.strip_latex(span)
  s = _LEADING_WORDS.sub("", s).strip().strip("*").strip()
  m = re.fullmatch(r"\(?([A-Z])\)?[.:)]?", s)
  if not strict:
    m = m or re.match(r"\(?([A-Z])\s*[.:)]\s+\S", s) or re.match(r"\(([A-Z])\)\s*\S", s)
  if m and m.group(1) in letters:
    return m.group(1)
  return None


def options_matching(span: str, options: Sequence[str], decimals: int | None = 2) -> list[int]:
  """Indices of options the span equals: same normalised text, else (when no text matches)
  the same number ("0.25" = "$\\frac{1}{4}$", "6" = "$6 \\mathrm{~m}$")."""
  target = normalize.norm_text(span)
  if not target:
    return []
  same = [i for i, o in enumerate(options) if normalize.norm_text(o) and normalize.norm_text(o) == target]
  if same:
    return same
  value = normalize.to_number(span)
  if value is None:
    return []
  out = []
  for i, o in enumerate(options):
    v = normalize.to_number(o)
    if v is not None and normalize.numbers_equal(value, v, decimals):
      out.append(i)
  return out


def _letter_positions(text: str, letters: Sequence[str]) -> tuple[dict[str, int], bool]:
  """Last position of each letter standing alone; bracketed "(X)" forms take precedence
  (MMMU's rule). Returns (positions, bracketed)."""
  bracketed = {}
  for m in re.finditer(r"\(([A-Z])\)", text):
    if m.group(1) in letters:
      bracketed[m.group(1)] = m.start()
  if bracketed:
    return bracketed, True
  plain = {}
  for m in re.finditer(r"(?<![\w\\'’-])([A-Z])(?![\w'’-])", text):
    if m.group(1) in letters:
      plain[m.group(1)] = m.start()
  return plain, False


def letters_in_text(text: str, letters: Sequence[str], rule: str) -> str | None:
  """An option letter from a whole response. rule "last": the last one mentioned (MMMU's
  parse_multi_choice_response); "unique": only if exactly one letter is mentioned (VLMEvalKit's
  can_infer_option, which MMStar uses)."""
  positions, _ = _letter_positions(text, letters)
  if not positions:
    return None
  if rule == "unique":
    return next(iter(positions)) if len(positions) == 1 else None
  return max(positions, key=positions.get)


def options_in_text(text: str, options: Sequence[str], rule: str) -> int | None:
  """An option whose text occurs in the response as whole words (case-insensitive); "last"
  or "unique" as in `letters_in_text`."""
  found = {}
  low = text.lower()
  for i, o in enumerate(options):
    o = str(o).strip().lower()
    if not o or (len(o) == 1 and o.isalpha()):
      continue  # single letters are handled as letters
    tail = r"(?![\w]|[.,]\d)" if o[-1].isalnum() else ""
    pattern = r"(?<![\w.])" + re.escape(o) + tail
    hits = [m.start() for m in re.finditer(pattern, low)]
    if hits:
      found[i] = hits[-1]
  if not found:
    return None
  if rule == "unique":
    return next(iter(found)) if len(found) == 1 else None
  return max(found, key=found.get)


def last_number(text: str) -> str | None:
  found = normalize.numbers(text)
  return found[-1] if found else None
