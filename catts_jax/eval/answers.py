"""Per-benchmark answer extraction and grading, after each benchmark's official evaluator.

  correct, extracted = grade("mathvision", response, example)

`example` is a dict in the unified schema (catts_jax.data). `extracted` is canonical, so equal
answers compare equal (vote tables rely on it): an option letter for multiple choice, a number
in shortest form ("12", "0.5") for numeric answers, else the cleaned answer text. Grading never
raises on any response string; an answer that cannot be found is wrong (no random guess).

Every benchmark first looks for the last \\boxed{} and then for "the answer is ..."; the rules
after that follow the official evaluators:
- Math-Vision (evaluation/evaluate.py, utils.py): a letter or the option's text counts; else
  a response ending " C." or starting "C\\n", or "... is 12."; values are equal when equal as
  text, or as numbers rounded to 2 decimals (LaTeX evaluated: \\frac{1}{2} = 0.5), or as
  tuples element by element.
- MathVista (calculate_score.py): a letter maps to its choice; integer answers must be equal
  numbers; float answers are compared after rounding to the problem's `precision`; lists element
  by element; text exactly (normalised). The official first step is a GPT-4 extraction; ours is
  rule-based: boxed / answer phrase, then the last number (numeric types) or a letter or option
  text mentioned in the response (multiple choice).
- MMMU (eval_utils.py): multiple choice by parse_multi_choice_response's order: "(X)" forms,
  then standalone letters, then option texts, the last mention winning; open answers from the
  last sentence with an indicator ("is", "so", "therefore", "answer", "=", ...), numbers
  compared rounded to 2 decimals.
- MMStar (VLMEvalKit can_infer): a letter only when exactly one option letter stands alone in
  the answer, else an option text only when exactly one occurs.

Where we differ from the official code, and why:
- Never a substring of the reference: the released CA-TTS grader counted "1" as matching "10".
  All text matches here are whole-token.
- MMMU open questions: the official check accepts a response when the reference string occurs
  anywhere in any of several candidate strings, or when any number in the indicator sentences
  equals it. We take one final answer: the boxed / "answer is" span, else the shortest tail
  after an indicator in the last sentence that has one. Its value (or its first number: "is
  24.5 cm^2, not 25" -> 24.5) must equal a numeric reference; a text reference must equal it or
  occur in it as whole words. A response listing several numbers is no longer right by accident.
  With no indicator anywhere, the last sentence's last number is the answer (a result is stated
  after the quantities it comes from; the official code then tries every number of the whole
  response). Numbers are read as stated: "3 x 10^8" is one number, the 2 of "m^2" none, "1,234"
  one thousand two hundred thirty-four (tests/test_answers.py: the family of forms, each beside
  the official parser's verdict).
- MMMU and MathVista never guess: the official MMMU parser picks a random letter when it finds
  none, and MathVista maps any unmatched text to the nearest choice by edit distance. An
  unparseable answer is wrong here, so broken outputs do not score above zero.
- MathVista integers: official `int(float(x))` truncates (12.7 -> 12 counts for 12); we require
  the same number.
- Math-Vision option texts are normalised the same way as the response (official compares the
  raw option string to the normalised answer, so LaTeX options could never match by text).
- Math-Vision keeps its official leniency where option texts are themselves letters (options
  "A, B, C, E, ..." with answer D = "E"): "E" counts, read as the option text, as officially.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from catts_jax.eval import normalize, parsing

Grader = Callable[[str, Mapping[str, Any]], tuple[bool, str]]
_IS_VALUE = re.compile(r"\bis\s+([^\s]+?)\.?\s*$")
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def _letters(example: Mapping[str, Any]) -> list[str]:
  return [chr(ord("A") + i) for i in range(len(example.get("options") or []))]


def _canonical(span: str) -> str:
  value = normalize.to_number(span)
  if value is not None:
    return normalize.format_number(value)
  return normalize.strip_latex(span)[:200]


# ---- multiple choice ---------------------------------------------------------------------------


def _from_span(span: str, options: list[str], letters: list[str], strict: bool = False) -> list[str]:
  """Letters the span names: as a letter first, then by option text (both may apply)."""
  out = []
  letter = parsing.letter_of_span(span, letters, strict)
  if letter:
    out.append(letter)
  for i in parsing.options_matching(span, options):
    if letters[i] not in out:
      out.append(letters[i])
  return out


def _choice(response: str, example: Mapping[str, Any], rule: str) -> tuple[list[str], str]:
  """(candidate letters, best first; the span they came from) for free-form multiple choice."""
  options, letters = list(example.get("options") or []), _letters(example)
  span, how = parsing.final_span(response)
  if how != "none":
    found = _from_span(span, options, letters)
    if found:
      return found, span
  whole = response.strip()
  found = _from_span(whole, options, letters, strict=True) if len(whole) <= 200 else []
  if found:
    return found, whole
  letter = parsing.letters_in_text(response, letters, rule)
  if letter:
    return [letter], letter
  index = parsing.options_in_text(response, options, rule)
  if index is not None:
    return [letters[index]], options[index]
  return [], span


def _multiple_choice(response: str, example: Mapping[str, Any], rule: str) -> tuple[bool, str]:
  found, span = _choice(response, example, rule)
  accepted = (example.get("metadata") or {}).get("accepted_answers") or [example["answer"]]
  if not found:
    return False, _canonical(span)
  return found[0] in accepted, found[0]


# ---- Math-Vision -------------------------------------------------------------------------------


def _mathvision_span(response: str) -> tuple[str, bool]:
  """(span, whether it is the whole response)."""
  span, how = parsing.final_span(response)
  if how != "none":
    return span, False
  m = _IS_VALUE.search(response.strip())
  if m and normalize.to_number(m.group(1)) is not None:
    return m.group(1), False
  return response.strip(), True


def grade_mathvision(response: str, example: Mapping[str, Any]) -> tuple[bool, str]:
  response = parsing.clip(response)
  gold = example["answer"]
  options = list(example.get("options") or [])
  if not options:
    span, _ = _mathvision_span(response)
    return normalize.values_equal(span, gold, 2), _canonical(span)
  letters = _letters(example)
  stripped = response.strip()
  if parsing.final_span(response)[1] == "none":
    for c in letters:  # the official evaluator's letter forms for answers without a marker
      if stripped.endswith((f" {c}.", f" ({c}).")) or stripped.startswith((f"{c}\n", f"({c})\n")):
        return c == gold, c
  span, whole = _mathvision_span(response)
  found = _from_span(span, options, letters, strict=whole)
  if not found:
    return False, _canonical(span)
  return gold in found, found[0]


# ---- MathVista ---------------------------------------------------------------------------------


def _typed_equal(pred: str, gold: str, answer_type: str, precision: int | None) -> bool:
  if answer_type == "integer":
    p, g = normalize.to_number(pred), normalize.to_number(gold)
    return p is not None and g is not None and normalize.numbers_equal(p, g, None)
  if answer_type == "float":
    p, g = normalize.to_number(pred), normalize.to_number(gold)
    return (
      p is not None and g is not None and normalize.numbers_equal(p, g, 2 if precision is None else precision)
    )
  if answer_type == "list":
    ps, gs = normalize.split_tuple(pred), normalize.split_tuple(gold)
    if ps is None or gs is None or len(ps) != len(gs):
      return False
    return all(
      _typed_equal(p, g, "float" if precision is not None else "any", precision) for p, g in zip(ps, gs)
    )
  if answer_type == "text":
    return bool(normalize.norm_text(pred)) and normalize.norm_text(pred) == normalize.norm_text(gold)
  return normalize.values_equal(pred, gold, 2 if precision is None else precision)


def _open_span(response: str, answer_type: str) -> str:
  """The final answer of an open response: boxed / phrase, else by type."""
  span, how = parsing.final_span(response)
  if how != "none":
    return span
  if answer_type == "list":
    lists = re.findall(r"[\[(][^\[\]()]*[\])]", response)
    return lists[-1] if lists else ""
  if answer_type in ("integer", "float"):
    return parsing.last_number(response) or ""
  return response.strip()


def grade_mathvista(response: str, example: Mapping[str, Any]) -> tuple[bool, str]:
  response = parsing.clip(response)
  if example.get("options"):
    return _multiple_choice(response, example, rule="last")
  meta = example.get("metadata") or {}
  answer_type = example.get("answer_type", "any")
  span = _open_span(response, answer_type)
  if answer_type == "list" and normalize.split_tuple(span) is None:
    inner = re.findall(r"[\[(][^\[\]()]*[\])]", span)  # "[1, 2]" inside a longer answer
    span = inner[-1] if inner else span
  correct = _typed_equal(span, example["answer"], answer_type, meta.get("precision"))
  return correct, _canonical(span)


# ---- MMMU --------------------------------------------------------------------------------------


def _mmmu_key_span(response: str) -> tuple[str, bool]:
  """(span, found): the tail of the last sentence that holds an answer indicator (shortest
  such tail) and True; the last sentence itself and False when none does."""
  text = response.strip().strip(".").lower()
  sentences = [s for s in re.split(r"\.\s+|\n", text) if s.strip()]
  if not sentences:
    return "", False
  for k in range(len(sentences) - 1, -1, -1):
    indicators = _INDICATORS + (("=",) if k == len(sentences) - 1 else ())
    tails = [sentences[k].split(ind)[-1].strip() for ind in indicators if ind in sentences[k]]
    tails = [t for t in tails if t and t not in ":,.!?;'"]
    if tails:
      return min(tails, key=len), True
  return sentences[-1].strip(), False


# "3 x 10^8", "1.2 \times 10^{-3}": one number. "m^2", "s^{-1}", "cm**3": a unit's power, no number.
_TIMES_TEN = re.compile(
  r"([-+]?\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|×|·|\*|x)\s*10\s*(?:\^|\*\*)\s*\{?\s*([-+−]?\d+)\s*\}?"
)
_UNIT_POWER = re.compile(r"(?<=[A-Za-z)])\s*(?:\^|\*\*)\s*\{?\s*[-+−]?\d+\s*\}?")


def _stated_numbers(span: str) -> list[str]:
  """The numbers a span states, in reading order: a number times a power of ten counts as
  one, the powers of units count as none."""
  span = _TIMES_TEN.sub(lambda m: f"{float(m[1]) * 10.0 ** int(m[2].replace('−', '-')):.10g}", span)
  return normalize.numbers(_UNIT_POWER.sub("", span))


def _mmmu_number(span: str, last: bool = False) -> float | None:
  """The span's value; else its first stated number ("24.5 square units, not 25" -> 24.5), or
  with `last` its last one (a sentence with no answer word states its result last: "3.5 rows
  of 7 m^2 make 24.5 m^2" -> 24.5)."""
  value = normalize.to_number(span)
  if value is None:
    found = _stated_numbers(span)
    value = normalize.to_number(found[-1 if last else 0]) if found else None
  return value


def _mmmu_open_equal(span: str, value: float | None, gold: str) -> bool:
  g = normalize.to_number(gold, strip_units=False)
  if g is not None:
    return value is not None and normalize.numbers_equal(value, g, 2)
  if normalize.values_equal(span, gold):
    return True
  want = normalize.strip_latex(gold).lower()
  have = normalize.strip_latex(span).lower()
  return bool(want) and re.search(r"(?<!\w)" + re.escape(want) + r"(?!\w)", have) is not None


def grade_mmmu(response: str, example: Mapping[str, Any]) -> tuple[bool, str]:
  response = parsing.clip(response)
  if example.get("options"):
    return _multiple_choice(response, example, rule="last")
  span, how = parsing.final_span(response)
  indicated = True
  if how == "none":
    span, indicated = _mmmu_key_span(response)
  value = _mmmu_number(span, last=not indicated)
  accepted = (example.get("metadata") or {}).get("accepted_answers") or [example["answer"]]
  correct = any(_mmmu_open_equal(span, value, str(g)) for g in accepted if str(g).strip())
  return correct, normalize.format_number(value) if value is not None else _canonical(span)


# ---- MMStar and user data ------------------------------------------------------------------------


def grade_mmstar(response: str, example: Mapping[str, Any]) -> tuple[bool, str]:
  return _multiple_choice(parsing.clip(response), example, rule="unique")


def grade_jsonl(response: str, example: Mapping[str, Any]) -> tuple[bool, str]:
  """User data: multiple choice as MMMU; open answers typed as MathVista (answer_type,
  metadata.precision), "any" compared as text, number (2 decimals) or tuple."""
  return grade_mathvista(response, example)


GRADERS: dict[str, Grader] = {
  "mathvision": grade_mathvision,
  "mathvista": grade_mathvista,
  "mmmu": grade_mmmu,
  "mmstar": grade_mmstar,
  "jsonl": grade_jsonl,
  "synthetic": grade_jsonl,
}


def grade(benchmark: str | None, response: Any, example: Mapping[str, Any]) -> tuple[bool, str]:
  """(correct, extracted answer). `benchmark` None uses the example's own."""
  name = benchmark or example.get("benchmark", "")
  if name not in GRADERS:
    raise ValueError(f"no grader for benchmark {name!r}; known: {sorted(GRADERS)}")
  text = "" if response is None else response if isinstance(response, str) else str(response)
  return GRADERS[name](text, example)


def extract(benchmark: str | None, response: Any, example: Mapping[str, Any]) -> str:
  return grade(benchmark, response, example)[1]
