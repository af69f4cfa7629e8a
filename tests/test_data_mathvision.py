"""Math-Vision testmini (304 real problems) through the tfds builder, prompts and grader."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from catts_jax import data
from catts_jax.eval import answers, normalize

SHARED = Path(__file__).parents[2] / "shared/data/math-vision-testmini"
MISSING = f"Math-Vision testmini not found at {SHARED} (clone the shared/ folder beside the repository)"
if not (SHARED / "testmini.jsonl").is_file() and os.environ.get("CI"):
  raise RuntimeError(MISSING)  # CI always has shared/ beside the clone: never skip there
pytestmark = pytest.mark.skipif(not (SHARED / "testmini.jsonl").is_file(), reason=MISSING)


@pytest.fixture(scope="module")
def rows():
  with open(SHARED / "testmini.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def mathvision(tmp_path_factory):
  return list(data.load("mathvision", manual_dir=SHARED, data_dir=tmp_path_factory.mktemp("tfds")))


def test_every_problem_is_built_with_its_fields(rows, mathvision):
  assert len(rows) == 304
  assert [ex["id"] for ex in mathvision] == [r["id"] for r in rows]  # none dropped, release order
  for row, ex in zip(rows, mathvision):
    assert ex["benchmark"] == "mathvision"
    assert ex["question"] == row["question"]
    assert ex["options"] == row["options"]
    assert ex["answer"] == row["answer"]
    assert ex["subject"] == row["subject"] and ex["level"] == str(row["level"])
    assert ex["question_type"] == ("multiple_choice" if row["options"] else "open")
    assert ex["images"] == [(SHARED / row["image"]).read_bytes()]
    assert ex["metadata"]["image"] == row["image"]
  kinds = collections.Counter(ex["question_type"] for ex in mathvision)
  assert kinds == {"multiple_choice": 190, "open": 114}
  assert set(collections.Counter(ex["subject"] for ex in mathvision).values()) == {19}


def test_every_image_decodes(mathvision):
  for ex in mathvision:
    (im,) = data.decode_images(ex)
    assert im.mode == "RGB" and im.width > 0 and im.height > 0, ex["id"]


def test_cached_build_is_reused_and_split_checked(mathvision, tmp_path):
  ds = data.load("mathvision", manual_dir=SHARED, data_dir=tmp_path)
  assert data.load("mathvision", manual_dir=SHARED, data_dir=tmp_path).by_id("292") == ds.by_id("292")
  with pytest.raises(ValueError, match="split 'test' not built"):
    data.load("mathvision", manual_dir=SHARED, data_dir=tmp_path, split="test")


def test_prompts(mathvision):
  ex = next(e for e in mathvision if e["id"] == "292")
  bare = data.prompt_for(ex)  # the paper: bare question for Math-Vision
  assert bare.startswith(ex["question"]) and "(B) $60 \\mathrm{~cm}^{2}$" in bare and "boxed" not in bare
  boxed = data.prompt_for(ex, "boxed")
  assert boxed.startswith(bare) and "\\boxed{}" in boxed and "letter" in boxed
  assert "<image1>" not in data.prompt_for(ex, image_tags="strip")
  assert data.prompt_for(ex, "Q: {question}\nOptions {letters}").endswith("Options A, B, C, D, E")
  with pytest.raises(ValueError, match="unknown prompt template"):
    data.prompt_for(ex, "fancy")


def natural_forms(ex) -> dict[str, str]:
  """The reference answer written the ways a model writes it."""
  gold = ex["answer"]
  forms = {
    "answer is": f"Let me look at the figure carefully. The answer is {gold}.",
    "boxed": f"Step 1: read the figure.\nStep 2: compute.\nSo the result is \\boxed{{{gold}}}",
  }
  if ex["options"]:
    text = ex["options"][ord(gold) - ord("A")]
    forms["option text"] = f"After checking every option, the answer is {text}."
    forms["(B)"] = f"({gold})"
    forms["letter in a sentence"] = (
      f"Comparing them, the correct option is ({gold}), since it fits the figure."
    )
  else:
    value = normalize.to_number(gold)
    if value is not None and value == int(value):
      forms["12.0"] = f"The answer is {int(value)}.0"
  return forms


def test_reference_answers_in_natural_forms_all_score(mathvision):
  failures, counts = [], collections.Counter()
  for ex in mathvision:
    for name, response in natural_forms(ex).items():
      counts[name] += 1
      correct, extracted = answers.grade("mathvision", response, ex)
      if not correct:
        failures.append((ex["id"], name, response, extracted))
  assert counts["answer is"] == counts["boxed"] == 304 and counts["option text"] == 190
  assert not failures, failures[:10]


def _same_answer(a, b) -> bool:
  def value(ex):
    return ex["options"][ord(ex["answer"]) - ord("A")] if ex["options"] else ex["answer"]

  return a["answer"] == b["answer"] or normalize.values_equal(value(a), value(b))


def test_answers_of_other_problems_score_zero(mathvision):
  n = len(mathvision)
  graded = correct = 0
  for i, ex in enumerate(mathvision):
    j = (i + 1) % n
    while _same_answer(mathvision[j], ex):
      j = (j + 1) % n
    for response in natural_forms(mathvision[j]).values():
      graded += 1
      correct += answers.grade("mathvision", response, ex)[0]
  assert graded > 1200 and correct == 0
  # The next problem's answer, whatever it is, scores only when the two answers coincide.
  for i, ex in enumerate(mathvision):
    other = mathvision[(i + 1) % n]
    for response in natural_forms(other).values():
      if answers.grade("mathvision", response, ex)[0]:
        assert _same_answer(other, ex), (ex["id"], response)
