"""Users' own problems: every `DIR/<split>.jsonl` becomes a split.

One JSON object per line:
  id        (required) unique within the split
  question  (required)
  answer    (required for grading) option letter or option text for multiple choice, else value
  images    list of image paths relative to DIR (or `image`: one path)
  options   list of option texts (multiple choice when non-empty)
  answer_type  integer | float | text | list | any (open questions; default any)
  subject, category, level   grouping keys
  benchmark    which grader to use (default "jsonl"; e.g. "mathvista" with metadata.precision)
  metadata     any JSON object, kept as is
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

from catts_jax.data import base, release_files, schema

KNOWN_FIELDS = {"id", "question", "answer", "images", "image", "options", "answer_type", "question_type"}
KNOWN_FIELDS |= {"subject", "category", "level", "benchmark", "metadata"}


class Jsonl(base.ReleaseBuilder):
  name = "jsonl"
  LAYOUT_HINT = "expected DIR/<split>.jsonl files"

  def available_splits(self, root: pathlib.Path) -> tuple[str, ...]:
    names = sorted(p.stem for p in root.glob("*.jsonl"))
    bad = [n for n in names if not re.fullmatch(r"\w+", n)]
    if bad:
      raise ValueError(f"jsonl: split names must be letters, digits or _: {bad} in {root}")
    return tuple(names)

  def find_split(self, root: pathlib.Path, split: str) -> pathlib.Path | None:
    path = root / f"{split}.jsonl"
    return path if path.is_file() else None

  def examples(self, src: pathlib.Path, split: str) -> Iterator[dict[str, Any]]:
    for where, row in release_files.json_rows(src):
      yield convert(row, src.parent, where)


def convert(row: dict[str, Any], root: pathlib.Path, where: str = "") -> dict[str, Any]:
  if not isinstance(row, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
  missing = [k for k in ("id", "question") if k not in row]
  if missing:
    raise ValueError(f"{where}: row lacks {missing}")
  where = f"{where} (id {row['id']})"
  paths = row.get("images") or ([row["image"]] if row.get("image") else [])
  if isinstance(paths, str):
    paths = [paths]
  images = []
  for p in paths:
    data = release_files.image_bytes(str(p), [root], where)
    images.append(schema.check_image(data, f"{where} {p}"))
  options = [str(o) for o in row.get("options") or []]
  answer = "" if row.get("answer") is None else str(row["answer"]).strip()
  if options and answer and answer not in schema.letters(len(options)):
    letter = schema.letter_of(answer, options)
    if letter is None:
      raise ValueError(f"{where}: answer {answer!r} is neither an option letter nor an option text")
    answer = letter
  metadata = dict(row.get("metadata") or {})
  metadata.update({k: v for k, v in row.items() if k not in KNOWN_FIELDS})
  return schema.make_example(
    id=str(row["id"]),
    benchmark=row.get("benchmark", "jsonl"),
    question=row["question"],
    answer=answer,
    images=images,
    options=options,
    question_type=row.get("question_type"),
    answer_type=row.get("answer_type") if not options else "option",
    subject=row.get("subject", ""),
    category=row.get("category", ""),
    level=row.get("level", ""),
    metadata=metadata,
  )
