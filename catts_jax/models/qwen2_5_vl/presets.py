"""Every Qwen2.5-VL shape by name: the one source for configs, benchmarks and tests.

Two kinds, as the two ways a model comes to be:
- `hf_config(name)`: a checkpoint's config.json, read by `ModelConfig.from_hf_dict` (and by
  transformers' `Qwen2_5_VLConfig(**d)`). The released Qwen/Qwen2.5-VL-*-Instruct shapes
  `RELEASED` (3b, 7b, 32b, 72b), in the hub's own partial layout; "1.5b" (Qwen2.5-1.5B's text
  model with the full vision tower) and "small" (2 layers, hidden 256, vocab 4096) for
  random-weight train benchmarks and AOT plans; "bench" (8 layers, hidden 512, vocab 8192),
  the fixed shape of `infer.bench`.
- `scratch_shape(name)`: the `{"text": ..., "vision": ...}` fields of a checkpoint built from
  scratch around its own tokenizer (`catts_jax.scratch`; vocabulary and special ids come from
  the tokenizer): "tiny" and "seven_b_shape", the test checkpoints (tests/tiny_hf.py), and
  "synthetic" / "synthetic_colour", the from-scratch policies of the synthetic reasoning and
  colour tasks (configs/synthetic_tiny.py), and "synthetic_expert", the CA-TTS Expert of the
  reasoning tasks (configs/synthetic_expert.py).

`resolve(model)` turns a config's `model` section into the `ModelConfig` a run builds.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Mapping

from catts_jax.models.qwen2_5_vl.config import ModelConfig

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


def _released(hidden, intermediate, layers, heads, kv_heads, vocab, tie, vision_intermediate) -> dict:
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


def _mrope(head_dim: int) -> list[int]:
  """Qwen's [16, 24, 24] split of head_dim / 2 = 64, scaled to other head sizes."""
  half = head_dim // 2
  t = half // 4
  return [t, (half - t) // 2, half - t - (half - t) // 2]


def _shaped(text: dict, vision: dict) -> dict:
  """The released 3B config with other text (and vision) sizes: same tokens, rope, layout."""
  d = copy.deepcopy(_HF["3b"])
  d.update(text)
  d["vision_config"].update(vision, out_hidden_size=text["hidden_size"])
  d["rope_scaling"]["mrope_section"] = _mrope(text["hidden_size"] // text["num_attention_heads"])
  return d


def _small() -> dict:
  text = dict(
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
    tie_word_embeddings=False,
  )
  vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, fullatt_block_indexes=[1])
  d = _shaped(text, vision)
  v = d["vocab_size"]  # special tokens inside the small vocabulary
  d.update(
    bos_token_id=v - 7,
    eos_token_id=v - 6,
    vision_start_token_id=v - 4,
    vision_end_token_id=v - 3,
    vision_token_id=v - 5,
    image_token_id=v - 2,
    video_token_id=v - 1,
  )
  return d


def _bench() -> dict:
  """transformers' nested layout (text_config / vision_config), as `infer.bench` builds it."""
  v = 8192
  return {
    "text_config": dict(
      vocab_size=v,
      hidden_size=512,
      intermediate_size=1408,
      num_hidden_layers=8,
      num_attention_heads=8,
      num_key_value_heads=2,
      rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
      max_position_embeddings=4096,
      pad_token_id=v - 5,
      eos_token_id=v - 6,
      bos_token_id=v - 7,
    ),
    "vision_config": dict(
      depth=2,
      hidden_size=128,
      intermediate_size=256,
      num_heads=2,
      out_hidden_size=512,
      fullatt_block_indexes=[1],
    ),
    "image_token_id": v - 2,
    "video_token_id": v - 1,
    "vision_start_token_id": v - 4,
    "vision_end_token_id": v - 3,
  }


_HF = {
  "3b": _released(2048, 11008, 36, 16, 2, 151936, True, 3420),
  "7b": _released(3584, 18944, 28, 28, 4, 152064, False, 3420),
  "32b": _released(5120, 27648, 64, 40, 8, 152064, False, 3456),
  "72b": _released(8192, 29568, 80, 64, 8, 152064, False, 3456),
}
RELEASED = tuple(_HF)
_HF |= {
  "1.5b": _shaped(
    dict(
      hidden_size=1536,
      intermediate_size=8960,
      num_hidden_layers=28,
      num_attention_heads=12,
      num_key_value_heads=2,
      vocab_size=151936,
      tie_word_embeddings=True,
    ),
    {},
  ),
  "small": _small(),
  "bench": _bench(),
}
HF_NAMES = tuple(_HF)

_PATCH = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def _synthetic(hidden: int, layers: int, mrope_section: list[int], vision: dict | None = None) -> dict:
  vision = vision or dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2)
  return {
    "text": dict(
      hidden_size=hidden,
      intermediate_size=2 * hidden,
      num_hidden_layers=layers,
      num_attention_heads=4,
      num_key_value_heads=2,
      # head_dim hidden/4 -> hidden/8 rotary frequencies split over (t, h, w)
      rope_parameters=dict(rope_type="default", rope_theta=1e4, mrope_section=mrope_section),
      rms_norm_eps=1e-6,
      max_position_embeddings=4096,  # Math-Vision prompts run to ~1.3k of its tokens
    ),
    "vision": dict(**vision, window_size=56, fullatt_block_indexes=[vision["depth"] - 1]),
  }


_SCRATCH = {
  "tiny": {  # head_dim 16, a window of 2x2 merged cells, one full-attention block
    "text": {
      "hidden_size": 64,
      "intermediate_size": 128,
      "num_hidden_layers": 2,
      "num_attention_heads": 4,
      "num_key_value_heads": 2,  # head_dim 16 -> 8 rotary frequencies = 2 + 3 + 3
      "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
      "rms_norm_eps": 1e-6,
      "max_position_embeddings": 4096,
    },
    "vision": {
      "depth": 3,
      "hidden_size": 32,
      "intermediate_size": 64,
      "num_heads": 2,
      "window_size": 56,  # 56 / 14 / 2 = 2x2 merged cells per window
      "fullatt_block_indexes": [1],
      **_PATCH,
    },
  },
  "seven_b_shape": {  # the real 7B's proportions where they matter, at reduced depth and width
    "text": {
      "hidden_size": 256,
      "intermediate_size": 512,
      "num_hidden_layers": 2,
      "num_attention_heads": 2,
      "num_key_value_heads": 1,  # head_dim 128, like the real 7B
      "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
      "rms_norm_eps": 1e-6,
      "max_position_embeddings": 4096,
    },
    "vision": {
      "depth": 4,
      "hidden_size": 160,
      "intermediate_size": 320,
      "num_heads": 2,  # head_dim 80, like the real 7B vision tower
      "window_size": 112,
      "fullatt_block_indexes": [1, 3],
      **_PATCH,
    },
  },
  "synthetic": _synthetic(128, 4, [4, 6, 6]),
  "synthetic_colour": _synthetic(64, 2, [2, 3, 3]),
  # The CA-TTS Expert of the synthetic tasks (configs/synthetic_expert.py): the policy's width,
  # 6 layers instead of 4, a vision tower twice as wide and deep. 192 wide costs twice as much
  # a step and, at lr 3e-3, solved worse after 1000 steps than this shape after 600
  # (docs/experiments/synthetic_expert.md).
  "synthetic_expert": _synthetic(
    128, 6, [4, 6, 6], vision=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=2)
  ),
}
SCRATCH_NAMES = tuple(_SCRATCH)


def hf_config(name: str) -> dict:
  """A copy of preset `name`'s config.json dict (one of HF_NAMES)."""
  if name not in _HF:
    raise ValueError(f"unknown Qwen2.5-VL preset {name!r}; choose from {sorted(_HF)}")
  return copy.deepcopy(_HF[name])


def scratch_shape(name: str) -> dict:
  """A copy of from-scratch shape `name` (one of SCRATCH_NAMES): {"text": {...}, "vision": {...}}."""
  if name not in _SCRATCH:
    raise ValueError(f"unknown from-scratch shape {name!r}; choose from {sorted(_SCRATCH)}")
  return copy.deepcopy(_SCRATCH[name])


def resolve(model: Mapping) -> ModelConfig:
  """The ModelConfig a run builds from its config's `model` section: the checkpoint's
  config.json when `model.ckpt` is a directory with one, else the preset `model.preset`
  names, with the run's `dtype`, `param_dtype`, `remat`, `remat_policy` and `scan_layers`, and its
  `logits_chunk` when it sets one."""
  ckpt, preset = model.get("ckpt", ""), model.get("preset", None)
  if ckpt and (pathlib.Path(ckpt) / "config.json").is_file():
    base = ModelConfig.from_pretrained(ckpt)
  elif preset in _HF:
    base = ModelConfig.from_hf_dict(hf_config(preset), source=f"preset {preset}")
  else:
    raise ValueError(
      f"no model: config.model.ckpt {ckpt!r} is not a checkpoint directory and config.model.preset "
      f"{preset!r} is not one of {sorted(_HF)}"
    )
  return base.replace(
    dtype=model.get("dtype", "bfloat16"),
    param_dtype=model.get("param_dtype", "float32"),
    remat=bool(model.get("remat", False)),
    remat_policy=str(model.get("remat_policy", "")),
    scan_layers=bool(model.get("scan_layers", True)),
    logits_chunk=int(model.get("logits_chunk", base.logits_chunk)),
  )
