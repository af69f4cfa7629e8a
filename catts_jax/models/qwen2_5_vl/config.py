"""Frozen Qwen2.5-VL configs, read from and written to HF `config.json`."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)


class ConfigError(ValueError):
  """A checkpoint's config cannot be used; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  # Defaults are those of transformers' Qwen2_5_VLVisionConfig: the hub's config.json
  # lists only some fields and relies on them (a test checks they agree).
  depth: int = 32
  hidden_size: int = 3584
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  out_hidden_size: int = 3584
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: int = 4
  hidden_act: str = "silu"
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6  # fixed in the reference model, not read from config.json

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Length of one flattened processor patch: channels x temporal x patch x patch."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def window_patches(self) -> int:
    """Side of an attention window in patches (112 px / 14 px = 8 for the real model)."""
    merged = self.window_size // self.spatial_merge_size // self.patch_size
    return merged * self.spatial_merge_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden_size: int = 8192
  intermediate_size: int = 29568
  num_layers: int = 80
  num_heads: int = 64
  num_kv_heads: int = 8
  rms_norm_eps: float = 1e-5
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  max_position_embeddings: int = 32768
  hidden_act: str = "silu"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


def _check_shape(source: str, prefix: str, cfg) -> None:
  """Every int field of `cfg` a positive integer (not 1.5, "64" or true) and every float one a
  positive number, named on failure."""
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    if field.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ConfigError(f"{source}: {prefix}{field.name} must be a positive integer, got {value!r}")
    if field.type == "float" and (
      isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
    ):
      raise ConfigError(f"{source}: {prefix}{field.name} must be a positive number, got {value!r}")
    if field.type.startswith("tuple[int") and not all(
      isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
      raise ConfigError(f"{source}: {prefix}{field.name} must hold integers, got {list(value)!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  tie_word_embeddings: bool = False
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  bos_token_id: int | None = 151643
  eos_token_id: int | list[int] | None = 151645
  pad_token_id: int | None = None
  # Compute dtype of activations and matmuls; params are stored in param_dtype.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Recompute each decoder layer's (and vision block's) activations in the backward pass
  # (training memory); `remat_policy` names what a layer keeps (a jax.checkpoint_policies
  # entry such as "dots_with_no_batch_dims_saveable"; "" keeps nothing).
  remat: bool = False
  remat_policy: str = ""
  # Run the stacked decoder layers as one lax.scan (one layer body to compile); False unrolls
  # them into straight-line code (same arithmetic; XLA's cost analysis then counts every layer).
  scan_layers: bool = True
  # Response positions whose logits are computed at a time when scoring and training
  # (scoring.chunked_statistics); 0 = all at once, i.e. [rows, length, vocab] float32 logits.
  logits_chunk: int = 512

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> ModelConfig:
    return dataclasses.replace(self, **kwargs)

  # --- HF config.json ---------------------------------------------------------------------

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ConfigError(
        f"{source}: unsupported model_type {model_type!r}; expected one of {SUPPORTED_MODEL_TYPES}"
      )
    # Old hub files keep text fields at the top level; transformers 5 nests them in text_config.
    text = {**d, **(d.get("text_config") or {})}
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
      raise ConfigError(f"{source}: unsupported text rope type {rope_type!r}")
    if text.get("use_sliding_window"):
      raise ConfigError(f"{source}: use_sliding_window=true is not supported")
    t_default = TextConfig()
    num_heads = text.get("num_attention_heads", t_default.num_heads)
    text_cfg = TextConfig(
      vocab_size=text.get("vocab_size", t_default.vocab_size),
      hidden_size=text.get("hidden_size", t_default.hidden_size),
      intermediate_size=text.get("intermediate_size", t_default.intermediate_size),
      num_layers=text.get("num_hidden_layers", t_default.num_layers),
      num_heads=num_heads,
      num_kv_heads=text.get("num_key_value_heads") or num_heads,
      rms_norm_eps=text.get("rms_norm_eps", t_default.rms_norm_eps),
      rope_theta=float(rope.get("rope_theta", text.get("rope_theta", t_default.rope_theta))),
      mrope_section=tuple(rope.get("mrope_section", t_default.mrope_section)),
      max_position_embeddings=text.get("max_position_embeddings", t_default.max_position_embeddings),
      hidden_act=text.get("hidden_act", t_default.hidden_act),
    )
    _check_shape(source, "", text_cfg)
    if text_cfg.hidden_size % text_cfg.num_heads or text_cfg.num_heads % text_cfg.num_kv_heads:
      raise ConfigError(
        f"{source}: hidden_size {text_cfg.hidden_size}, num_attention_heads {text_cfg.num_heads} and "
        f"num_key_value_heads {text_cfg.num_kv_heads} must divide one another"
      )
    if sum(text_cfg.mrope_section) * 2 != text_cfg.head_dim:
      raise ConfigError(
        f"{source}: mrope_section {list(text_cfg.mrope_section)} must sum to head_dim/2 = "
        f"{text_cfg.head_dim // 2}"
      )

    v = dict(d.get("vision_config") or {})
    if "in_chans" in v and "in_channels" not in v:
      v["in_channels"] = v["in_chans"]
    v_rope = v.get("rope_parameters") or {}
    if "rope_theta" in v_rope:
      v["rope_theta"] = v_rope["rope_theta"]
    fields = {f.name for f in dataclasses.fields(VisionConfig)} - {"rms_norm_eps"}
    vision_kwargs = {k: v[k] for k in fields if k in v}
    if "num_attention_heads" in v and "num_heads" not in v:
      vision_kwargs["num_heads"] = v["num_attention_heads"]
    if "fullatt_block_indexes" in vision_kwargs:
      vision_kwargs["fullatt_block_indexes"] = tuple(vision_kwargs["fullatt_block_indexes"])
    vision_cfg = VisionConfig(**vision_kwargs)
    _check_shape(source, "vision_config.", vision_cfg)
    if vision_cfg.hidden_size % vision_cfg.num_heads:
      raise ConfigError(
        f"{source}: vision_config.hidden_size {vision_cfg.hidden_size} is not a multiple of its "
        f"num_heads {vision_cfg.num_heads}"
      )
    if vision_cfg.out_hidden_size != text_cfg.hidden_size:
      raise ConfigError(
        f"{source}: vision_config.out_hidden_size {vision_cfg.out_hidden_size} != text "
        f"hidden_size {text_cfg.hidden_size}"
      )

    tie = bool(d.get("tie_word_embeddings") or text.get("tie_word_embeddings", False))
    m_default = cls()
    return cls(
      text=text_cfg,
      vision=vision_cfg,
      tie_word_embeddings=tie,
      image_token_id=d.get("image_token_id", m_default.image_token_id),
      video_token_id=d.get("video_token_id", m_default.video_token_id),
      vision_start_token_id=d.get("vision_start_token_id", m_default.vision_start_token_id),
      vision_end_token_id=d.get("vision_end_token_id", m_default.vision_end_token_id),
      bos_token_id=text.get("bos_token_id", m_default.bos_token_id),
      eos_token_id=text.get("eos_token_id", m_default.eos_token_id),
      pad_token_id=text.get("pad_token_id", m_default.pad_token_id),
    )

  @classmethod
  def from_pretrained(cls, path: str | pathlib.Path) -> ModelConfig:
    path = pathlib.Path(path)
    config_file = path / "config.json" if path.is_dir() or not path.suffix else path
    if not config_file.is_file():
      raise ConfigError(f"{config_file}: missing config.json (is {path} an HF checkpoint directory?)")
    try:
      d = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
      raise ConfigError(f"{config_file}: not valid JSON ({e})") from e
    return cls.from_hf_dict(d, source=str(config_file))

  def to_hf_dict(self) -> dict[str, Any]:
    """The hub's config.json layout (text fields at top level), which transformers reads."""
    t, v = self.text, self.vision
    return {
      "architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "model_type": "qwen2_5_vl",
      "vocab_size": t.vocab_size,
      "hidden_size": t.hidden_size,
      "intermediate_size": t.intermediate_size,
      "num_hidden_layers": t.num_layers,
      "num_attention_heads": t.num_heads,
      "num_key_value_heads": t.num_kv_heads,
      "hidden_act": t.hidden_act,
      "rms_norm_eps": t.rms_norm_eps,
      "rope_theta": t.rope_theta,
      "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
      "max_position_embeddings": t.max_position_embeddings,
      "use_sliding_window": False,
      "tie_word_embeddings": self.tie_word_embeddings,
      "image_token_id": self.image_token_id,
      "video_token_id": self.video_token_id,
      "vision_start_token_id": self.vision_start_token_id,
      "vision_end_token_id": self.vision_end_token_id,
      "bos_token_id": self.bos_token_id,
      "eos_token_id": self.eos_token_id,
      "pad_token_id": self.pad_token_id,
      "torch_dtype": self.param_dtype,
      "vision_config": {
        "model_type": "qwen2_5_vl",
        "depth": v.depth,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads,
        "in_chans": v.in_channels,
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "window_size": v.window_size,
        "out_hidden_size": v.out_hidden_size,
        "fullatt_block_indexes": list(v.fullatt_block_indexes),
        "tokens_per_second": v.tokens_per_second,
        "hidden_act": v.hidden_act,
      },
    }
