"""Supervised warm start of a tiny Qwen2.5-VL from scratch on the synthetic tasks:
`python -m train.sft --config configs/synthetic_tiny.py[:colour] --out runs/sft`.

`reasoning` (default): count / bricks / bars with short reasoning; `colour`: the toy task of
the CDRL learning check, a few steps only (format, not skill). `reasoning` runs 800 steps, not
600: the count task is learned late. The model's shape is the `synthetic` (`synthetic_colour`)
preset (catts_jax/models/qwen2_5_vl/presets.py). Run history: docs/experiments/synthetic_sft.md.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from catts_jax.models.qwen2_5_vl import presets


def get_config(task: str = "reasoning") -> ml_collections.ConfigDict:
  if task not in ("reasoning", "colour"):
    raise ValueError(f"task {task!r}: expected 'reasoning' or 'colour'")
  c = ml_collections.ConfigDict()
  c.model = dict(
    ckpt="",  # empty: build from scratch with the shape below
    dtype="float32",
    # Reasoning rows of up to 136 tokens pad to 160, not 256: 800 steps over one shape.
    buckets_per_octave=4 if task == "reasoning" else 1,
    scratch=dict(
      corpus_config=task,
      vocab_size=512 if task == "reasoning" else 320,
      seed=0,
      min_pixels=56 * 56,
      max_pixels=112 * 112,
      **presets.scratch_shape("synthetic" if task == "reasoning" else "synthetic_colour"),
    ),
  )
  c.data = dict(benchmark="synthetic", config=task, split="train", data_dir=placeholder(str), template=None)
  c.optimizer = dict(
    learning_rate=3e-3,
    warmup_steps=20,
    total_steps=800 if task == "reasoning" else 30,
    weight_decay=0.0,
    clip_norm=1.0,
    accumulate=1,
    freeze_vision=False,
  )
  c.train = dict(steps=c.optimizer.total_steps, batch_size=32, seed=0, save_every=50, format_only=False)
  c.eval = dict(split="test", size=128, every=0, max_new_tokens=64)
  return c
