"""MathVista (Lu et al. 2024) from its official releases.

Either the HF release (AI4Math/MathVista): `data/testmini-*.parquet`, `data/test-*.parquet` with
columns pid, question, image (path), decoded_image ({bytes, path}), choices, unit, precision,
answer, question_type (multi_choice | free_form), answer_type (text | integer | float | list),
metadata, query; or the JSON release: `testmini.json` / `test.json` (objects keyed by pid, same
fields) with `images/` beside them.

Multiple-choice answers are released as the option text; we store the letter (schema rule) and
keep the text in metadata["answer_text"]. The official prompt (`query`) is kept in metadata.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Iterator
from typing import Any

from catts_jax.data import base, release_files, schema

ANSWER_TYPES = {"integer": "integer", "float": "float", "list": "list", "text": "text"}


class MathVista(base.ReleaseBuilder):
  name = "mathvista"
  SPLITS = ("testmini", "test")
  LAYOUT_HINT = "expected data/testmini-*.parquet (HF) or testmini.json + images/"

  def find_split(self, root: pathlib.Path, split: str) -> list[pathlib.Path] | None:
    found = release_files.shards(root, split)
    if not found:
      found = [p for p in (root / f"{split}.json", root / "data" / f"{split}.json") if p.is_file()][:1]
    return found or None

  def examples(self, src: list[pathlib.Path], split: str) -> Iterator[dict[str, Any]]:
    if src[0].suffix == ".parquet":
      rows = release_files.parquet_rows(src)
    else:
      rows = release_files.json_rows(src[0])
    roots = [src[0].parent, src[0].parent.parent]
    for where, row in rows:
      yield convert(row, roots, where)


def convert(row: dict[str, Any], roots: list[pathlib.Path], where: str = "") -> dict[str, Any]:
  missing = [k for k in ("pid", "question", "question_type") if k not in row]
  if missing:
    raise ValueError(f"{where}: MathVista row lacks {missing}")
  pid = str(row["pid"])
  where = f"{where} (pid {pid})"
  image = release_files.image_bytes(row.get("decoded_image"), roots, where)
  if image is None:
    image = release_files.image_bytes(row.get("image"), roots, where)
  images = [schema.check_image(image, where)] if image is not None else []
  choices = [str(c) for c in row.get("choices") or []]
  answer_text = "" if row.get("answer") is None else str(row["answer"])
  meta = dict(row.get("metadata") or {})
  if row["question_type"] == "multi_choice":
    letter = schema.letter_of(answer_text, choices) if answer_text else ""
    if letter is None:
      raise ValueError(f"{where}: answer {answer_text!r} is none of the choices {choices}")
    question_type, answer_type, answer = schema.MULTIPLE_CHOICE, "option", letter
  else:
    question_type, answer = schema.OPEN, answer_text
    answer_type = ANSWER_TYPES.get(str(row.get("answer_type")), "any")
  precision = row.get("precision")
  if isinstance(precision, float) and math.isnan(precision):  # pandas-written files use NaN for null
    precision = None
  return schema.make_example(
    id=pid,
    benchmark="mathvista",
    question=row["question"],
    answer=answer,
    images=images,
    options=choices,
    question_type=question_type,
    answer_type=answer_type,
    subject=meta.get("task", ""),
    category=meta.get("context", ""),
    level=meta.get("grade", ""),
    metadata={
      **meta,
      "unit": row.get("unit"),
      "precision": None if precision is None else int(precision),
      "answer_text": answer_text,
      "query": row.get("query"),
      "source_answer_type": row.get("answer_type"),
    },
  )
