"""MMStar (Chen et al. 2024) from its HF release (Lin-Chen/MMStar).

  DIR/mmstar.parquet  (or val-*.parquet shards)   one `val` split of 1,500 problems

Columns: index, question (options inline: "...\\nOptions: A: ..., B: ..., C: ..., D: ..."),
image ({bytes, path}), answer (a letter), category, l2_category, meta_info. The options are
parsed out of the question for option-text grading; the question keeps them, so prompts do not
repeat them (metadata["options_in_question"]).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

from catts_jax.data import base, release_files, schema

_OPTIONS_HEAD = re.compile(r"options?\s*:", re.IGNORECASE)


def parse_inline_options(question: str) -> list[str]:
  """Option texts from "Options: A: x, B: y, ..." (letters in order from A); [] if absent."""
  heads = list(_OPTIONS_HEAD.finditer(question))
  if not heads:
    return []
  tail = question[heads[-1].end() :]
  starts = []
  pos = 0
  for letter in schema.LETTERS:
    m = re.compile(rf"(?:^|(?<=[\s,;(]))\(?{letter}\s*[:.)]\s*").search(tail, pos)
    if not m:
      break
    starts.append(m)
    pos = m.end()
  texts = []
  for i, m in enumerate(starts):
    end = starts[i + 1].start() if i + 1 < len(starts) else len(tail)
    texts.append(tail[m.end() : end].strip().rstrip(",;").strip())
  return texts if len(texts) >= 2 else []


class MMStar(base.ReleaseBuilder):
  name = "mmstar"
  SPLITS = ("val",)
  LAYOUT_HINT = "expected mmstar.parquet or val-*.parquet"

  def find_split(self, root: pathlib.Path, split: str) -> list[pathlib.Path] | None:
    found = release_files.shards(root, split) or sorted(root.rglob("mmstar*.parquet"))
    return found or None

  def examples(self, src: list[pathlib.Path], split: str) -> Iterator[dict[str, Any]]:
    roots = [src[0].parent]
    for where, row in release_files.parquet_rows(src):
      yield convert(row, roots, where)


def convert(row: dict[str, Any], roots: list[pathlib.Path], where: str = "") -> dict[str, Any]:
  missing = [k for k in ("index", "question", "answer") if k not in row]
  if missing:
    raise ValueError(f"{where}: MMStar row lacks {missing}")
  where = f"{where} (index {row['index']})"
  image = release_files.image_bytes(row.get("image"), roots, where)
  answer = str(row["answer"]).strip().upper()
  options = parse_inline_options(row["question"])
  parsed = bool(options)
  if not parsed or answer not in schema.letters(len(options)):
    # Unparseable layout: keep letter-only grading over the letters up to the answer's (>= D).
    n = max(4, schema.LETTERS.index(answer) + 1 if answer in schema.LETTERS else 0)
    options, parsed = [""] * n, False
  meta = dict(row.get("meta_info") or {})
  return schema.make_example(
    id=str(row["index"]),
    benchmark="mmstar",
    question=row["question"],
    answer=answer,
    images=[schema.check_image(image, where)] if image is not None else [],
    options=options,
    question_type=schema.MULTIPLE_CHOICE,
    answer_type="option",
    subject=row.get("category", ""),
    category=row.get("l2_category", ""),
    metadata={**meta, "options_in_question": True, "options_parsed": parsed},
  )
