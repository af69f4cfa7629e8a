"""MMMU (Yue et al. 2024) from its HF release (MMMU/MMMU), one folder per subject.

  DIR/<Subject>/validation-*.parquet, DIR/<Subject>/dev-*.parquet

Columns: id ("validation_Art_Theory_1"), question (with "<image n>" tags), options (a Python
list literal in a string), explanation, image_1 .. image_7 ({bytes, path} or null), img_type,
answer (a letter, or the value for open questions), topic_difficulty, question_type
(multiple-choice | open), subfield. Images are stored in image_1..7 order; the tags in the text
say where each goes.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator
from typing import Any

from catts_jax.data import base, release_files, schema

MAX_IMAGES = 7


def literal_list(value: Any, where: str = "") -> list[str]:
  """MMMU stores lists as strings: "['a', 'b']". A real list passes through."""
  if value is None or value == "":
    return []
  if isinstance(value, list | tuple):
    return [str(v) for v in value]
  try:
    parsed = ast.literal_eval(str(value))
  except (ValueError, SyntaxError) as e:
    raise ValueError(f"{where}: cannot parse list {value!r} ({e})") from e
  if not isinstance(parsed, list | tuple):
    raise ValueError(f"{where}: expected a list, got {value!r}")
  return [str(v) for v in parsed]


def accepted_answers(raw: str) -> list[str]:
  """["A", "C"] from "['A', 'C']"; a list of numbers ("[0, 1]", an interval) stays one answer."""
  if raw.startswith("["):
    try:
      parsed = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      return [raw]
    if isinstance(parsed, list) and parsed and all(isinstance(v, str) for v in parsed):
      return [v.strip() for v in parsed]
  return [raw]


class MMMU(base.ReleaseBuilder):
  name = "mmmu"
  SPLITS = ("validation", "dev")
  LAYOUT_HINT = "expected <Subject>/validation-*.parquet"

  def find_split(self, root: pathlib.Path, split: str) -> list[pathlib.Path] | None:
    return release_files.shards(root, split) or None

  def examples(self, src: list[pathlib.Path], split: str) -> Iterator[dict[str, Any]]:
    for path in src:
      for where, row in release_files.parquet_rows([path]):
        yield convert(row, [path.parent], where, folder=path.parent.name)


def subject_of(example_id: str, fallback: str = "") -> str:
  """'validation_Art_Theory_1' -> 'Art_Theory'."""
  parts = example_id.split("_")
  return "_".join(parts[1:-1]) if len(parts) >= 3 else fallback


def convert(
  row: dict[str, Any], roots: list[pathlib.Path], where: str = "", folder: str = ""
) -> dict[str, Any]:
  missing = [k for k in ("id", "question", "answer") if k not in row]
  if missing:
    raise ValueError(f"{where}: MMMU row lacks {missing}")
  where = f"{where} (id {row['id']})"
  images = []
  for i in range(1, MAX_IMAGES + 1):
    data = release_files.image_bytes(row.get(f"image_{i}"), roots, f"{where} image_{i}")
    if data is not None:
      images.append(schema.check_image(data, f"{where} image_{i}"))
  options = literal_list(row.get("options"), where)
  multiple_choice = row.get("question_type", "multiple-choice") == "multiple-choice" and bool(options)
  # A few answers are lists ("['A', 'C']" or several accepted values); all of them count.
  raw = str(row["answer"]).strip()
  accepted = accepted_answers(raw)
  answer = accepted[0] if accepted else ""
  if multiple_choice and any(a not in schema.letters(len(options)) for a in accepted):
    raise ValueError(f"{where}: answer {raw!r} is not an option letter of {options}")
  return schema.make_example(
    id=str(row["id"]),
    benchmark="mmmu",
    question=row["question"],
    answer=answer,
    images=images,
    options=options if multiple_choice else [],
    question_type=schema.MULTIPLE_CHOICE if multiple_choice else schema.OPEN,
    answer_type="option" if multiple_choice else "any",
    subject=subject_of(str(row["id"]), folder),
    category=row.get("subfield", "") or "",
    level=row.get("topic_difficulty", "") or "",
    metadata={
      "explanation": row.get("explanation"),
      "img_type": row.get("img_type"),
      "source_question_type": row.get("question_type"),
      "accepted_answers": accepted,
    },
  )
