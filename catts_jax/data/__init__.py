"""Benchmarks as tensorflow-datasets builders, read without TensorFlow.

  from catts_jax import data
  ds = data.load("mathvision", manual_dir="shared/data/math-vision-testmini", data_dir="/tmp/tfds")
  ex = ds[0]                       # dict in the unified schema (see schema.py)
  text = data.prompt_for(ex)       # the benchmark's default template; or template="boxed"
  images = data.decode_images(ex)  # RGB PIL images, in order
  parts = data.chat_content(ex, text)  # images placed at their <image n> tags (MMMU)
  ex = ds.by_id("4")

Benchmarks: mathvision (testmini, test), mathvista (testmini, test), mmstar (val),
mmmu (validation, dev) and jsonl (your own DIR/<split>.jsonl; see jsonl_dataset.py). Each reads
the official release from `manual_dir` and writes array_record files under `data_dir` once.
`mix` draws a weighted, seeded mixture of several loaded datasets (CDRL training sets).
"""

from __future__ import annotations

from catts_jax.data.loader import BUILDERS, DEFAULT_SPLIT, Dataset, builder, load, step_indices
from catts_jax.data.mixture import Mixture, mix
from catts_jax.data.prompts import DEFAULT_TEMPLATE, TEMPLATES, chat_content, prompt_for
from catts_jax.data.schema import MULTIPLE_CHOICE, OPEN, decode_images

__all__ = [
  "BUILDERS",
  "DEFAULT_SPLIT",
  "DEFAULT_TEMPLATE",
  "MULTIPLE_CHOICE",
  "OPEN",
  "TEMPLATES",
  "Dataset",
  "Mixture",
  "builder",
  "chat_content",
  "decode_images",
  "load",
  "mix",
  "prompt_for",
  "step_indices",
]
