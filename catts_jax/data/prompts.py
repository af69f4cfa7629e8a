"""Per-benchmark prompt templates.

The paper prompts MathVista and Math-Vision with the bare question and MMStar and MMMU with a
"solve step by step, one \\boxed{}" instruction; those are the defaults. Choose another by name
("bare", "boxed", "query" = MathVista's official prompt) or pass a format string with any of
{question}, {options} (the lettered block, empty when none or already in the question),
{letters} ("A, B, C") and {instruction} (the boxed instruction for the question type).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from catts_jax.data import schema

BOXED_OPEN = "Solve the problem step by step, and put your final answer in one \\boxed{}."
BOXED_CHOICE = (
  "Solve the problem step by step, and put your final answer in one \\boxed{}. "
  "Only the letter of the correct option goes in the \\boxed{}."
)
TEMPLATES = {
  "bare": "{question}{options}",
  "boxed": "{question}{options}\n\n{instruction}",
}
DEFAULT_TEMPLATE = {
  "mathvision": "bare",
  "mathvista": "bare",
  "mmstar": "boxed",
  "mmmu": "boxed",
  "jsonl": "bare",
}
IMAGE_TAG = re.compile(r"<image\s?\d+>")


def options_block(options: Sequence[str]) -> str:
  if not options:
    return ""
  return "\nChoices:\n" + "\n".join(f"({letter}) {text}" for letter, text in zip(schema.LETTERS, options))


def prompt_for(example: Mapping[str, Any], template: str | None = None, *, image_tags: str = "keep") -> str:
  """The user-turn text for an example. `image_tags`: "keep" the release's <image n> tags in
  the text, or "strip" them (the images themselves are passed separately, in order)."""
  name = template or DEFAULT_TEMPLATE.get(example.get("benchmark", ""), "bare")
  meta = example.get("metadata") or {}
  question = example["question"]
  if image_tags == "strip":
    question = IMAGE_TAG.sub("", question).strip()
  elif image_tags != "keep":
    raise ValueError(f"image_tags must be 'keep' or 'strip', not {image_tags!r}")
  if name == "query":
    if meta.get("query"):
      return meta["query"]
    name = "bare"
  options = example.get("options") or []
  multiple_choice = example.get("question_type") == schema.MULTIPLE_CHOICE
  fields = {
    "question": question,
    "options": "" if meta.get("options_in_question") else options_block(options),
    "letters": ", ".join(schema.letters(len(options))),
    "instruction": BOXED_CHOICE if multiple_choice else BOXED_OPEN,
  }
  if name in TEMPLATES:
    fmt = TEMPLATES[name]
  elif "{" in name:
    fmt = name
  else:
    raise ValueError(
      f"unknown prompt template {name!r}; use one of {sorted(TEMPLATES) + ['query']} or a format string"
    )
  try:
    return fmt.format_map(fields)
  except (KeyError, IndexError, ValueError) as e:
    raise ValueError(f"prompt template {name!r}: {e!r}; fields are {sorted(fields)}") from e
