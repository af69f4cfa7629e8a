"""Procedurally drawn perceive-then-reason problems: the answer needs the image and a short
chain of reasoning, so a model can be trained from scratch here and test-time scaling has
real diversity to work with.

Tasks (each a seeded generator of (image, question, reasoning + answer)):
- colour:  one shape; "What colour is the shape?" (the toy task: perception only)
- count:   shapes of three colours; "How many red shapes are there?" (count, then answer)
- bricks:  a brick wall with bricks missing; "How many bricks are missing?" (rows x columns,
           count the bricks present, subtract: the paper's own example)
- bars:    four coloured bars; "Which bar is the tallest?" (multiple choice A-D)

  ds = data.load("synthetic", config="reasoning", split="test", data_dir=...)
  ex["metadata"]["solution"]   # the reference reasoning, for supervised warm starts

Splits: train (4096), validation (768, for choosing settings) and test (256, for reporting).
Configs choose the task mix and split sizes; building is deterministic (seed per split and
index), so every machine builds the same problems. Grading is the jsonl grader (MathVista
rules: \\boxed{} or "the answer is", typed numbers, option letters).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from catts_jax.data import base, schema

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (245, 245, 240)


def _png(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
  x0, y0, x1, y1 = box
  if shape == "square":
    draw.rectangle(box, fill=fill)
  elif shape == "circle":
    draw.ellipse(box, fill=fill)
  else:
    draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _boxed(reasoning: str, answer: str) -> str:
  return f"{reasoning} The answer is \\boxed{{{answer}}}."


def colour_task(rng: np.random.Generator) -> dict:
  size = 56
  image = Image.new("RGB", (size, size), BACKGROUND)
  name = str(rng.choice(list(COLOURS)))
  shape = str(rng.choice(SHAPES))
  side = int(rng.integers(20, 36))
  x, y = (int(v) for v in rng.integers(2, size - side - 2, size=2))
  _draw_shape(ImageDraw.Draw(image), shape, (x, y, x + side, y + side), COLOURS[name])
  return dict(
    image=image,
    question="What colour is the shape?",
    answer=name,
    answer_type="text",
    # The shape is drawn but not named: the colour is the answer's only free choice.
    solution=_boxed(f"The shape is {name}.", name),
  )


def count_task(rng: np.random.Generator) -> dict:
  size, cells = 112, 4  # a 4x4 grid of 28-pixel cells, at most one shape per cell
  image = Image.new("RGB", (size, size), BACKGROUND)
  draw = ImageDraw.Draw(image)
  names = [str(c) for c in rng.choice(list(COLOURS), size=3, replace=False)]
  target = names[0]
  n_target = int(rng.integers(1, 6))
  colours = [target] * n_target + [str(rng.choice(names[1:])) for _ in range(int(rng.integers(1, 5)))]
  spots = rng.choice(cells * cells, size=len(colours), replace=False)
  for colour, spot in zip(colours, spots):
    row, col = divmod(int(spot), cells)
    side = int(rng.integers(14, 22))
    x = col * 28 + int(rng.integers(1, 28 - side))
    y = row * 28 + int(rng.integers(1, 28 - side))
    _draw_shape(draw, str(rng.choice(SHAPES)), (x, y, x + side, y + side), COLOURS[colour])
  counting = ", ".join(str(i + 1) for i in range(n_target))
  return dict(
    image=image,
    question=f"How many {target} shapes are there?",
    answer=str(n_target),
    answer_type="integer",
    solution=_boxed(f"Counting the {target} shapes: {counting}.", str(n_target)),
  )


def bricks_task(rng: np.random.Generator) -> dict:
  size = 112
  rows, cols = int(rng.integers(2, 5)), int(rng.integers(3, 6))
  total = rows * cols
  missing = int(rng.integers(0, min(5, total - 1) + 1))
  gone = set(int(i) for i in rng.choice(total, size=missing, replace=False))
  image = Image.new("RGB", (size, size), BACKGROUND)
  draw = ImageDraw.Draw(image)
  brick = (180, 70, 40)
  width, height = (size - 8) // cols, min(20, (size - 8) // rows)
  top = (size - rows * height) // 2
  for r in range(rows):
    for c in range(cols):
      if r * cols + c in gone:
        continue
      x, y = 4 + c * width, top + r * height
      draw.rectangle((x + 1, y + 1, x + width - 2, y + height - 2), fill=brick)
  present = total - missing
  reasoning = (
    f"The wall has {rows} rows of {cols} bricks, so {total} bricks in all. "
    f"I count {present} bricks. {total} - {present} = {missing}."
  )
  return dict(
    image=image,
    question="How many bricks are missing from the wall?",
    answer=str(missing),
    answer_type="integer",
    solution=_boxed(reasoning, str(missing)),
  )


def bars_task(rng: np.random.Generator) -> dict:
  size = 112
  names = list(COLOURS)
  heights = [int(h) for h in rng.choice(np.arange(1, 10), size=4, replace=False)]
  image = Image.new("RGB", (size, size), BACKGROUND)
  draw = ImageDraw.Draw(image)
  unit, width = 11, 20
  for i, (name, h) in enumerate(zip(names, heights)):
    x = 8 + i * 26
    draw.rectangle((x, size - 4 - h * unit, x + width, size - 4), fill=COLOURS[name])
  best = int(np.argmax(heights))
  letter = schema.LETTERS[best]
  listing = ", ".join(f"{name} {h}" for name, h in zip(names, heights))
  return dict(
    image=image,
    question="Which bar is the tallest?",
    options=[f"the {name} bar" for name in names],
    answer=letter,
    answer_type="option",
    solution=_boxed(f"The bar heights are {listing}. The tallest is {names[best]}.", letter),
  )


TASKS: dict[str, Callable[[np.random.Generator], dict]] = {
  "colour": colour_task,
  "count": count_task,
  "bricks": bricks_task,
  "bars": bars_task,
}


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  tasks: tuple[str, ...] = ()
  # validation: for choosing settings, so that the test split is only reported
  split_sizes: tuple[tuple[str, int], ...] = (("train", 4096), ("validation", 768), ("test", 256))
  seed: int = 0


CONFIGS = (
  SyntheticConfig(name="colour", description="name the shape's colour", tasks=("colour",)),
  SyntheticConfig(
    name="reasoning",
    description="count by colour, missing bricks, tallest bar",
    tasks=("count", "bricks", "bars"),
  ),
)
SPLIT_SEEDS = {"train": 1, "test": 2, "validation": 3}


def generate(tasks: tuple[str, ...], split: str, index: int, seed: int = 0) -> dict:
  """Problem `index` of `split` as a schema example (same arguments -> same problem)."""
  rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index])
  task = tasks[index % len(tasks)]
  p = TASKS[task](rng)
  return schema.make_example(
    id=f"{split}-{index:05d}",
    benchmark="synthetic",
    question=p["question"],
    answer=p["answer"],
    images=[_png(p["image"])],
    options=p.get("options", ()),
    answer_type=p["answer_type"],
    category=task,
    metadata={"solution": p["solution"]},
  )


class Synthetic(base.SchemaBuilder):
  """`Synthetic(config="reasoning", data_dir=...)`; nothing to download."""

  name = "synthetic"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "colour, count, bricks and bars tasks.",
    "1.1.0": "a validation split (768 problems) for choosing settings.",
  }
  BUILDER_CONFIGS = list(CONFIGS)

  def _split_generators(self, dl_manager) -> dict[str, Iterator]:
    return {split: self._generate_examples(split, n) for split, n in self.builder_config.split_sizes}

  def _generate_examples(self, split: str, n: int):
    for i in range(n):
      ex = generate(self.builder_config.tasks, split, i, self.builder_config.seed)
      yield ex["id"], ex


def corpus(config: str = "reasoning", split: str = "train", n: int = 512) -> list[str]:
  """Questions, options and reference solutions of the first `n` problems: the text a
  from-scratch tokenizer for these tasks is trained on."""
  tasks = next(c for c in CONFIGS if c.name == config).tasks
  texts = []
  for i in range(n):
    ex = generate(tasks, split, i)
    texts += [ex["question"], *ex["options"], json.loads(ex["metadata"])["solution"]]
  return texts
