"""The one example schema every benchmark is converted to.

Each builder maps its official release onto these fields, so grading, prompting, metrics and
training code never branch on where a problem came from:

  id             str        the benchmark's own id (pid, index, "validation_Art_1", ...)
  benchmark      str        grader to use: mathvision | mathvista | mmstar | mmmu | jsonl
  images         list[bytes]  encoded image files (JPEG/PNG as released), in prompt order
  question       str        question text as released (image tags like <image1> kept)
  options        list[str]  option texts in letter order A, B, ...; empty for open questions
  answer         str        the option letter for multiple choice, else the reference value
  question_type  str        "multiple_choice" | "open"
  answer_type    str        "option" | "integer" | "float" | "text" | "list" | "any"
  subject, category, level   str   grouping keys for per-group accuracy ("" when unknown)
  metadata       dict       everything else (stored as a JSON string)

Images stay as bytes: no `tfds.features.Image`, so neither building nor reading needs
TensorFlow. Decode with `decode_images`.
"""

from __future__ import annotations

import io
import json
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from catts_jax import images as images_lib

MULTIPLE_CHOICE = "multiple_choice"
OPEN = "open"
QUESTION_TYPES = (MULTIPLE_CHOICE, OPEN)
ANSWER_TYPES = ("option", "integer", "float", "text", "list", "any")
LETTERS = string.ascii_uppercase
TEXT_FIELDS = (
  "id",
  "benchmark",
  "question",
  "answer",
  "question_type",
  "answer_type",
  "subject",
  "category",
  "level",
)


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      **{name: tfds.features.Text() for name in TEXT_FIELDS},
      "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      "options": tfds.features.Sequence(tfds.features.Text()),
      "metadata": tfds.features.Text(),
    }
  )


def letters(n: int) -> list[str]:
  return list(LETTERS[:n])


def check_image(data: bytes, where: str) -> bytes:
  """The bytes unchanged if PIL recognises them as an image within `images.MAX_PIXELS`
  (header and structure only; pixels are decoded by `decode_images`); else an error naming `where`."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      size = im.size
      im.verify()
  except Exception as e:  # PIL raises many types for bad files
    raise ValueError(f"{where}: not a readable image ({type(e).__name__}: {e})") from e
  w, h = size
  if w * h > images_lib.MAX_PIXELS:
    raise ValueError(f"{where}: image of {w}x{h} pixels exceeds the limit of {images_lib.MAX_PIXELS} pixels")
  return data


def make_example(
  *,
  id: str,
  benchmark: str,
  question: str,
  answer: str,
  images: Sequence[bytes] = (),
  options: Sequence[str] = (),
  question_type: str | None = None,
  answer_type: str | None = None,
  subject: str = "",
  category: str = "",
  level: Any = "",
  metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """A schema-checked example ready for the tfds writer (metadata serialised)."""
  options = [str(o) for o in options]
  question_type = question_type or (MULTIPLE_CHOICE if options else OPEN)
  answer_type = answer_type or ("option" if question_type == MULTIPLE_CHOICE else "any")
  if question_type not in QUESTION_TYPES:
    raise ValueError(f"{id}: question_type {question_type!r} not in {QUESTION_TYPES}")
  if answer_type not in ANSWER_TYPES:
    raise ValueError(f"{id}: answer_type {answer_type!r} not in {ANSWER_TYPES}")
  if question_type == MULTIPLE_CHOICE and answer and answer not in letters(len(options)):
    raise ValueError(f"{id}: answer {answer!r} is not one of the option letters {letters(len(options))}")
  return {
    "id": str(id),
    "benchmark": benchmark,
    "images": [bytes(b) for b in images],
    "question": str(question),
    "options": options,
    "answer": str(answer),
    "question_type": question_type,
    "answer_type": answer_type,
    "subject": str(subject or ""),
    "category": str(category or ""),
    "level": "" if level is None else str(level),
    "metadata": json.dumps(dict(metadata or {}), ensure_ascii=False, default=str),
  }


def _text(v: Any) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def from_record(record: Mapping[str, Any]) -> dict[str, Any]:
  """A record read back from tfds (bytes everywhere) as plain Python types."""
  out: dict[str, Any] = {name: _text(record[name]) for name in TEXT_FIELDS}
  out["images"] = [bytes(b) for b in record["images"]]
  out["options"] = [_text(o) for o in record["options"]]
  out["metadata"] = json.loads(_text(record["metadata"]) or "{}")
  return out


def decode_images(example: Mapping[str, Any]) -> list[Image.Image]:
  """RGB PIL images of an example (`catts_jax.images.open_image`: EXIF orientation, alpha over
  white, 16-bit scaled); errors name the example and image index."""
  out = []
  for i, data in enumerate(example["images"]):
    where = f"{example.get('id')}: image {i}"
    try:
      out.append(images_lib.open_image(data, name=where))
    except images_lib.ImageError as e:
      raise images_lib.ImageError(f"{where} cannot be decoded ({str(e).removeprefix(where + ': ')})") from e
  return out


def letter_of(answer_text: str, options: Sequence[str]) -> str | None:
  """The letter of the option whose text is exactly `answer_text` (releases that store the
  answer as option text, e.g. MathVista), or None."""
  for letter, text in zip(LETTERS, options):
    if str(text).strip() == str(answer_text).strip():
      return letter
  return None
