"""Per-benchmark prompt templates.

The paper prompts MathVista and Math-Vision with the bare question and MMStar and MMMU with a
"solve step by step, one \\boxed{}" instruction; those are the defaults. Choose another by name
("bare", "boxed", "query" = MathVista's official prompt, "release" = the official CA-TTS release's
wording per benchmark) or pass a format string with any of
{question}, {options} (the lettered block, empty when none or already in the question),
{letters} ("A, B, C") and {instruction} (the boxed instruction for the question type).
`chat_content` turns a prompt into chat-template content with the images where its tags are.
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
# The release's instruction comes first, one sentence for both question types.
RELEASE_BOXED = (
  "Please solve the problem step by step and put your answer in one '\\boxed{{}}'. "
  "If it is a multiple choice question, only one letter is allowed in the '\\boxed{{}}'.\n"
)
TEMPLATES = {
  "bare": "{question}{options}",
  "boxed": "{question}{options}\n\n{instruction}",
  "release_boxed": RELEASE_BOXED + "{question}{options}",
}
DEFAULT_TEMPLATE = {
  "mathvision": "bare",
  "mathvista": "bare",
  "mmstar": "boxed",
  "mmmu": "boxed",
  "jsonl": "bare",
  "synthetic": "bare",
}
IMAGE_TAG = re.compile(r"<image\s?(\d+)>")


def options_block(options: Sequence[str]) -> str:
  if not options:
    return ""
  return "\nChoices:\n" + "\n".join(f"({letter}) {text}" for letter, text in zip(schema.LETTERS, options))


def prompt_for(example: Mapping[str, Any], template: str | None = None, *, image_tags: str = "keep") -> str:
  """The user-turn text for an example. `image_tags`: "keep" the release's <image n> tags in
  the text, or "strip" them (the images themselves are passed separately, in order)."""
  name = template or DEFAULT_TEMPLATE.get(example.get("benchmark", ""), "bare")
  if name == "release":  # the release's: bare where ours is, its own boxed wording elsewhere
    name = {"boxed": "release_boxed"}.get(DEFAULT_TEMPLATE.get(example.get("benchmark", ""), "bare"), "bare")
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


def chat_content(example: Mapping[str, Any], text: str) -> list[dict[str, Any]]:
  """HF chat-template content for a prompt: {"type": "image", "index": i} items where the
  text's <image n> tags are (MMMU: image_n goes at its first tag), {"type": "text", ...}
  between them. Images without a tag go first; so do all images when the tags do not index
  them (Math-Vision's <image1>, <image2>, ... all name parts of its one picture)."""
  n_images = len(example.get("images") or [])
  tags = list(IMAGE_TAG.finditer(text))
  numbers = {int(m.group(1)) for m in tags}
  if not tags or not numbers <= set(range(1, n_images + 1)):
    return [{"type": "image", "index": i} for i in range(n_images)] + [{"type": "text", "text": text}]
  parts: list[dict[str, Any]] = [
    {"type": "image", "index": i} for i in range(n_images) if i + 1 not in numbers
  ]
  placed, pos = set(), 0
  for m in tags:
    n = int(m.group(1))
    if n in placed:
      continue
    if text[pos : m.start()]:
      parts.append({"type": "text", "text": text[pos : m.start()]})
    parts.append({"type": "image", "index": n - 1})
    placed.add(n)
    pos = m.end()
  if text[pos:]:
    parts.append({"type": "text", "text": text[pos:]})
  return parts
