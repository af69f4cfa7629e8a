"""The synthetic perceive-then-reason tasks: deterministic, gradable, small images, answers
that follow from what is drawn."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from catts_jax import data
from catts_jax.data import synthetic
from catts_jax.eval import answers


@pytest.mark.parametrize("config", [c.name for c in synthetic.CONFIGS])
def test_reference_solutions_grade_correct_and_images_are_small(config):
  tasks = next(c for c in synthetic.CONFIGS if c.name == config).tasks
  for i in range(40):
    ex = data.schema.from_record(synthetic.generate(tasks, "train", i))
    image = Image.open(io.BytesIO(ex["images"][0]))
    assert max(image.size) <= 112
    correct, extracted = answers.grade("synthetic", ex["metadata"]["solution"], ex)
    assert correct, (ex["id"], ex["metadata"]["solution"], extracted)
    # Another problem's solution is right only when it happens to have the same answer.
    other = data.schema.from_record(synthetic.generate(tasks, "train", i + 1))
    assert answers.grade("synthetic", other["metadata"]["solution"], ex)[0] == (
      other["answer"] == ex["answer"]
    )


def test_generation_is_deterministic_and_splits_differ():
  tasks = ("count", "bricks", "bars")
  a = synthetic.generate(tasks, "train", 7)
  assert a == synthetic.generate(tasks, "train", 7)
  images = {
    split: synthetic.generate(tasks, split, 7)["images"][0] for split in ("train", "validation", "test")
  }
  assert len(set(images.values())) == 3


def _pixels(ex):
  return np.asarray(Image.open(io.BytesIO(ex["images"][0])).convert("RGB")).astype(int)


def test_the_colour_answer_is_the_colour_drawn():
  for i in range(20):
    ex = data.schema.from_record(synthetic.generate(("colour",), "test", i))
    px = _pixels(ex).reshape(-1, 3)
    drawn = px[np.abs(px - synthetic.BACKGROUND).sum(-1) > 60]
    nearest = min(synthetic.COLOURS, key=lambda c: np.abs(drawn.mean(0) - synthetic.COLOURS[c]).sum())
    assert nearest == ex["answer"]


def test_the_bricks_answer_counts_the_gaps():
  for i in range(12):
    ex = data.schema.from_record(synthetic.generate(("bricks",), "test", i))
    meta = ex["metadata"]["solution"]
    total = int(meta.split("so ")[1].split(" bricks")[0])
    brick_pixels = (np.abs(_pixels(ex) - (180, 70, 40)).sum(-1) < 10).sum()
    # every brick present covers the same area: present = brick pixels / one brick's pixels
    assert total - int(ex["answer"]) > 0
    assert brick_pixels % (total - int(ex["answer"])) == 0


def test_loads_through_tfds_with_splits(tmp_path):
  ds = data.load("synthetic", config="colour", split="test", data_dir=tmp_path)
  assert len(ds) == 256 and ds[0]["benchmark"] == "synthetic" and ds[0]["category"] == "colour"
  assert json.dumps(ds[0]["metadata"])  # solution kept as metadata
  train = data.load("synthetic", config="colour", split="train", data_dir=tmp_path)
  assert train[0]["id"].startswith("train-")
  validation = data.load("synthetic", config="colour", split="validation", data_dir=tmp_path)
  assert len(validation) == 768 and validation[0]["id"].startswith("validation-")
  with pytest.raises(ValueError, match="pass manual_dir"):
    data.load("mathvision", data_dir=tmp_path)


def test_corpus_covers_the_task_text():
  text = " ".join(synthetic.corpus("reasoning", n=30))
  assert "bricks" in text and "tallest" in text and "\\boxed{" in text
