"""Qwen2.5-VL in Flax NNX, numerically equal to transformers' reference; every shape by name in
`presets` (released 3b ... 72b, benchmark and test shapes, `presets.resolve(cfg.model)`)."""

from catts_jax.models.qwen2_5_vl.config import ConfigError, ModelConfig, TextConfig, VisionConfig
from catts_jax.models.qwen2_5_vl.model import Qwen2_5_VL, get_rope_index
from catts_jax.models.qwen2_5_vl.params import CheckpointError, check_weights, load_hf, save_hf
from catts_jax.models.qwen2_5_vl.text import init_cache

__all__ = [
  "CheckpointError",
  "ConfigError",
  "ModelConfig",
  "Qwen2_5_VL",
  "TextConfig",
  "check_weights",
  "VisionConfig",
  "get_rope_index",
  "init_cache",
  "load_hf",
  "save_hf",
]
