"""Math-Vision (MATH-V, Wang et al. 2024) from its GitHub release layout.

  DIR/testmini.jsonl, DIR/test.jsonl   (or DIR/data/*.jsonl, as in the GitHub repository)
  DIR/images/<id>.jpg                  the row's `image` path, relative to DIR

Rows: id, question (with <image1>.. tags that all refer to the one composite image), options
(option texts; empty for open questions), answer (a letter A-E for multiple choice, else the
value), solution, level (1-5), subject, image.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

from catts_jax.data import base, schema


class MathVision(base.ReleaseBuilder):
  name = "mathvision"
  SPLITS = ("testmini", "test")
  LAYOUT_HINT = "expected testmini.jsonl / test.jsonl beside images/"

  def find_split(self, root: pathlib.Path, split: str) -> pathlib.Path | None:
    for path in (root / f"{split}.jsonl", root / "data" / f"{split}.jsonl"):
      if path.is_file():
        return path
    return None

  def examples(self, src: pathlib.Path, split: str) -> Iterator[dict[str, Any]]:
    root = (
      src.parent.parent if src.parent.name == "data" and not (src.parent / "images").is_dir() else src.parent
    )
    for lineno, line in enumerate(src.open(encoding="utf-8"), 1):
      if not line.strip():
        continue
      where = f"{src}:{lineno}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e})") from e
      yield convert(row, root, where)


def convert(row: dict[str, Any], root: pathlib.Path, where: str = "") -> dict[str, Any]:
  missing = [k for k in ("id", "question", "answer") if k not in row]
  if missing:
    raise ValueError(f"{where}: Math-Vision row lacks {missing}")
  where = f"{where} (id {row['id']})"
  images = []
  if row.get("image"):
    path = root / row["image"]
    if not path.is_file():
      raise FileNotFoundError(f"{where}: image {path} not found")
    images.append(schema.check_image(path.read_bytes(), f"{where} {path}"))
  options = [str(o) for o in row.get("options") or []]
  answer = str(row["answer"]).strip()
  if options and answer not in schema.letters(len(options)):
    answer = schema.letter_of(answer, options) or answer  # an option's text; else make_example names it
  if options:
    question_type, answer_type = schema.MULTIPLE_CHOICE, "option"
  else:
    question_type, answer_type = schema.OPEN, "any"
  return schema.make_example(
    id=str(row["id"]),
    benchmark="mathvision",
    question=row["question"],
    answer=answer,
    images=images,
    options=options,
    question_type=question_type,
    answer_type=answer_type,
    subject=row.get("subject", ""),
    level=row.get("level", ""),
    metadata={"solution": row.get("solution"), "image": row.get("image")},
  )
