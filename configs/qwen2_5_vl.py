"""Qwen2.5-VL model presets: `--config configs/qwen2_5_vl.py:7b` (3b, 7b, 32b, 72b).

Each preset is the `config.json` of the released Qwen/Qwen2.5-VL-*-Instruct checkpoint, in
the hub's own (partial) layout, so it goes through the same `ModelConfig.from_hf_dict`
path as a downloaded checkpoint. Use them for abstract (no-weight) work: AOT compiles,
sharding plans, memory estimates, random-weight benchmarks.
"""

from __future__ import annotations

import copy

import ml_collections

_SHARED = {
  "architectures": ["Qwen2_5_VLForConditionalGeneration"],
  "model_type": "qwen2_5_vl",
  "hidden_act": "silu",
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "max_position_embeddings": 128000,
  "use_sliding_window": False,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "vision_start_token_id": 151652,
  "vision_end_token_id": 151653,
  "vision_token_id": 151654,
  "image_token_id": 151655,
  "video_token_id": 151656,
  "torch_dtype": "bfloat16",
}


def _vision(out_hidden_size: int, intermediate_size: int) -> dict:
  return {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": intermediate_size,
    "num_heads": 16,
    "in_chans": 3,
    "out_hidden_size": out_hidden_size,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "spatial_patch_size": 14,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "temporal_patch_size": 2,
  }


def _preset(hidden, intermediate, layers, heads, kv_heads, vocab, tie, vision_intermediate) -> dict:
  return {
    **copy.deepcopy(_SHARED),
    "hidden_size": hidden,
    "intermediate_size": intermediate,
    "num_hidden_layers": layers,
    "num_attention_heads": heads,
    "num_key_value_heads": kv_heads,
    "vocab_size": vocab,
    "tie_word_embeddings": tie,
    "vision_config": _vision(hidden, vision_intermediate),
  }


HF_CONFIGS = {
  "3b": _preset(2048, 11008, 36, 16, 2, 151936, True, 3420),
  "7b": _preset(3584, 18944, 28, 28, 4, 152064, False, 3420),
  "32b": _preset(5120, 27648, 64, 40, 8, 152064, False, 3456),
  "72b": _preset(8192, 29568, 80, 64, 8, 152064, False, 3456),
}


def get_config(preset: str = "7b") -> ml_collections.ConfigDict:
  if preset not in HF_CONFIGS:
    raise ValueError(f"unknown Qwen2.5-VL preset {preset!r}; choose from {sorted(HF_CONFIGS)}")
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  config.model.preset = preset
  config.model.hf_config = HF_CONFIGS[preset]
  config.model.dtype = "bfloat16"  # compute
  config.model.param_dtype = "float32"  # master weights
  return config
