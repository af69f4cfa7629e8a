"""Is each count cell's colour in the vision tower's output? A linear probe per image token.

    python docs/experiments/probe_cells.py docs/reports/expert_quality/cell_probe.json

The count task draws at most one shape per 28-pixel cell of a 4 x 4 grid, and each merged
image token covers one cell (token k: row k // 4, column k % 4). For the bundled Expert, the
bundled CDRL policy and an Expert-shaped tower with random weights, this takes the merged
features of train and validation count images, labels each token with its cell's content
("none" or the shape's colour, read off the pixels), fits a ridge-regression probe on the
train tokens (one-hot targets) and reports its accuracy on the validation tokens, overall and
on occupied cells. The mean pixels of each cell, probed the same way, check the labels and the
token-to-cell order.
"""

from __future__ import annotations

import io
import json
import pathlib
import sys

import jax
import numpy as np
from flax import nnx
from PIL import Image

from catts_jax.data import synthetic
from catts_jax.models.qwen2_5_vl import Qwen2_5_VL, load_hf
from catts_jax.processing import Processor

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRID, CELL = 4, 28
LABELS = ("none", *synthetic.COLOURS)


def cell_labels(image: Image.Image) -> list[int]:
  """Each cell's content, row by row: 0 for none, else 1 + the index of its shape's colour."""
  pixels = np.asarray(image.convert("RGB"), np.int32)
  labels = []
  for row in range(GRID):
    for col in range(GRID):
      cell = pixels[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
      drawn = [int((cell == rgb).all(-1).sum()) for rgb in synthetic.COLOURS.values()]
      labels.append(1 + int(np.argmax(drawn)) if max(drawn) else 0)
  return labels


def count_images(split: str, n: int) -> list[Image.Image]:
  """The first n count problems of `split` in the reasoning config (tasks take turns)."""
  tasks = next(c.tasks for c in synthetic.CONFIGS if c.name == "reasoning")
  first = tasks.index("count")
  return [
    Image.open(io.BytesIO(synthetic.generate(tasks, split, first + len(tasks) * i)["images"][0]))
    for i in range(n)
  ]


def features(model, processor: Processor, images: list[Image.Image], batch: int = 32) -> np.ndarray:
  """[len(images) * 16, D]: each image's merged tokens in processor order."""
  prompt = processor.chat_prompt("x", num_images=1)
  encode = nnx.jit(lambda m, p, pos, img: m.image_features(p, pos, img))
  out = []
  for start in range(0, len(images), batch):
    chunk = images[start : start + batch]
    b = processor([prompt] * len(chunk), [[im] for im in chunk])
    f = np.asarray(encode(model, b.pixel_values, b.patch_pos, b.patch_image))
    per_slot = f.reshape(b.pixel_values.shape[0], -1, f.shape[-1])[: len(chunk), : GRID * GRID]
    out.append(per_slot.reshape(-1, f.shape[-1]))
  return np.concatenate(out)


def mean_pixels(images: list[Image.Image]) -> np.ndarray:
  rows = []
  for image in images:
    pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    for row in range(GRID):
      for col in range(GRID):
        rows.append(pixels[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL].mean((0, 1)))
  return np.asarray(rows)


def probe(train_x, train_y, val_x, val_y, ridge: float = 1e-2) -> dict:
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  x = np.concatenate([(train_x - mean) / std, np.ones((len(train_x), 1))], 1)
  v = np.concatenate([(val_x - mean) / std, np.ones((len(val_x), 1))], 1)
  y = np.eye(len(LABELS))[train_y]
  w = np.linalg.solve(x.T @ x + ridge * len(x) * np.eye(x.shape[1]), x.T @ y)
  pred = (v @ w).argmax(1)
  occupied = val_y > 0
  return {
    "accuracy": float((pred == val_y).mean()),
    "occupied_accuracy": float((pred[occupied] == val_y[occupied]).mean()),
    "train_accuracy": float(((x @ w).argmax(1) == train_y).mean()),
  }


def main(out: str, n_train: int = 480, n_val: int = 240) -> None:
  train_images, val_images = count_images("train", n_train), count_images("validation", n_val)
  train_y = np.asarray([label for im in train_images for label in cell_labels(im)])
  val_y = np.asarray([label for im in val_images for label in cell_labels(im)])
  report = {
    "train_tokens": len(train_y),
    "validation_tokens": len(val_y),
    "labels": LABELS,
    "none_rate_validation": float((val_y == 0).mean()),
    "probes": {
      "mean pixels of the cell": probe(mean_pixels(train_images), train_y, mean_pixels(val_images), val_y)
    },
  }
  expert = ROOT / "checkpoints" / "synthetic_expert"
  towers = {
    "expert (bundled)": (load_hf(expert), expert),
    "policy (bundled CDRL)": (
      load_hf(ROOT / "checkpoints" / "synthetic_cdrl"),
      ROOT / "checkpoints" / "synthetic_cdrl",
    ),
  }
  shape = towers["expert (bundled)"][0].cfg
  towers["expert-shaped, random weights"] = (Qwen2_5_VL(shape, rngs=nnx.Rngs(0)), expert)
  for name, (model, path) in towers.items():
    processor = Processor(str(path))
    train_x, val_x = features(model, processor, train_images), features(model, processor, val_images)
    report["probes"][name] = probe(train_x, train_y, val_x, val_y)
    print(name, report["probes"][name], flush=True)
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(out).write_text(json.dumps(report, indent=1) + "\n")
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  jax.config.update("jax_platforms", "cpu")
  main(*sys.argv[1:2])
