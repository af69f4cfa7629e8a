"""Qwen2.5-VL model settings: `--config configs/qwen2_5_vl.py:7b` (3b, 7b, 32b, 72b).

The shape is the released checkpoint's config.json, by name, from
catts_jax/models/qwen2_5_vl/presets.py (`presets.resolve(config.model)` builds it). Use it for
abstract (no-weight) work: AOT compiles, sharding plans, memory estimates, random-weight
benchmarks.
"""

from __future__ import annotations

import ml_collections

from catts_jax.models.qwen2_5_vl import presets


def get_config(preset: str = "7b") -> ml_collections.ConfigDict:
  if preset not in presets.RELEASED:
    raise ValueError(f"unknown Qwen2.5-VL preset {preset!r}; choose from {sorted(presets.RELEASED)}")
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  config.model.ckpt = ""  # no weights: the preset's shape
  config.model.preset = preset
  config.model.dtype = "bfloat16"  # compute
  config.model.param_dtype = "float32"  # master weights
  return config
