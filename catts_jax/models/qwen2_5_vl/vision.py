"""Qwen2.5-VL vision tower: patch embedding, 2-D RoPE, window/full attention, patch merger.

Patches arrive one image per slot, [images, patches per image] (`processing.image_slots`),
each in the processor's order (spatial-merge blocks of 2x2 patches, row-major). Attention
runs per slot: no image attends to another (the reference's cu_seqlens), and the cost is
images x slot^2, not (all patches)^2. The reference permutes patches into window order and
back; attention restricted by segment ids is invariant to that permutation, so we keep the
order and mask instead. Windows are computed inside jit from each patch's (row, col), so any
mix of image sizes in the padded, fixed-shape slots compiles once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from catts_jax.models.qwen2_5_vl.config import ModelConfig, VisionConfig
from catts_jax.models.qwen2_5_vl.layers import (
  Dense,
  GatedMLP,
  RMSNorm,
  apply_rope,
  attention,
  inverse_frequencies,
)
from catts_jax.sharding import constrain

# Logical axes of the activations between blocks: image slots over the batch axes, like rows.
SLOTS = ("batch", None, "activation_embed")


def vision_cos_sin(patch_pos: jax.Array, cfg: VisionConfig) -> tuple[jax.Array, jax.Array]:
  """patch_pos [..., 2] (row, col) -> cos, sin [..., head_dim]: half the dims rotate by row,
  half by col."""
  inv_freq = inverse_frequencies(cfg.head_dim // 2, cfg.rope_theta)
  freqs = patch_pos.astype(jnp.float32)[..., None] * inv_freq  # [..., 2, head_dim/4]
  freqs = freqs.reshape(*freqs.shape[:-2], -1)  # row freqs then col freqs
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def segment_masks(patch_pos: jax.Array, patch_image: jax.Array, cfg: VisionConfig):
  """Per slot: full-attention mask (same image) and window mask (same image and window),
  [I, 1, S, S] each, from patch_pos [I, S, 2] and patch_image [I, S].

  patch_image is the image (frame) index of each patch, -1 for padding; padding patches
  attend only to each other and are dropped after the merger.
  """
  window = patch_pos // cfg.window_patches  # [I, S, 2]
  same_image = patch_image[:, :, None] == patch_image[:, None, :]
  same_window = jnp.all(window[:, :, None, :] == window[:, None, :, :], axis=-1)
  return same_image[:, None], (same_image & same_window)[:, None]


class VisionAttention(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = Dense((d,), (3, n, h), ("embed", None, "q_heads", "head_dim"), **kw)
    self.proj = Dense((n, h), (d,), ("q_heads", "head_dim", "embed"), **kw)

  def __call__(self, x, cos, sin, mask):
    q, k, v = jnp.moveaxis(self.qkv(x), -3, 0)  # each [I, S, N, H]: a batch of images
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = attention(q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), mask)
    return self.proj(out)


class VisionBlock(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.attn = VisionAttention(cfg, **kw)
    self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, use_bias=True, **kw)

  def __call__(self, x, cos, sin, mask):
    x = x + self.attn(self.norm1(x), cos, sin, mask)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """RMSNorm, then each 2x2 block of patches (consecutive in processor order) -> one token."""

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.unit = cfg.spatial_merge_size**2
    merged = cfg.hidden_size * self.unit
    self.ln_q = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.fc1 = Dense((merged,), (merged,), ("embed", "mlp"), use_bias=True, **kw)
    self.fc2 = Dense((merged,), (cfg.out_hidden_size,), ("mlp", "embed"), use_bias=True, **kw)

  def __call__(self, x):
    x = self.ln_q(x).reshape(-1, self.unit * x.shape[-1])
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTransformer(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    v = cfg.vision
    dtype, param_dtype = cfg.compute_dtype, jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cfg = v
    self.patch_embed = Dense((v.patch_dim,), (v.hidden_size,), (None, "embed"), use_bias=False, **kw)
    self.blocks = nnx.List([VisionBlock(v, **kw) for _ in range(v.depth)])
    self.merger = PatchMerger(v, **kw)

  def __call__(self, pixel_values, patch_pos, patch_image):
    """pixel_values [I, S, C*T*p*p], patch_pos [I, S, 2], patch_image [I, S] -> merged
    features [I * S / merge^2, out_hidden] in slot order: slot i's at [i * S / merge^2, ...),
    padding included (the host's `image_index` points image tokens at the real ones). Each
    slot is encoded on the device that holds it: no feature moves between slots here.

    S must be a multiple of merge^2 (the processor's patches come in whole merge blocks).
    """
    cos, sin = vision_cos_sin(patch_pos, self.cfg)
    full_mask, window_mask = segment_masks(patch_pos, patch_image, self.cfg)
    x = constrain(self.patch_embed(pixel_values), SLOTS)
    for i, block in enumerate(self.blocks):
      x = constrain(
        block(x, cos, sin, full_mask if i in self.cfg.fullatt_block_indexes else window_mask), SLOTS
      )
    return self.merger(x)
