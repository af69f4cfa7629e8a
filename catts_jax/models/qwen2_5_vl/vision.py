"""Qwen2.5-VL vision tower: patch embedding, 2-D RoPE, window/full attention, patch merger.

Patches arrive one image per slot, [images, patches per image] (`processing.image_slots`),
each in the processor's order (spatial-merge blocks of 2x2 patches, row-major). Attention
runs per slot: no image attends to another (the reference's cu_seqlens), and the cost is
images x slot^2, not (all patches)^2, in the full-attention blocks. Like the reference, each
slot's merge blocks are permuted into window order once (computed inside jit from each
patch's (row, col), so any mix of image sizes in the padded, fixed-shape slots compiles
once); a window is then a contiguous run of at most P = window_patches^2 patches, and window
attention runs block-locally (P queries against 3P keys) at slot x 3P cost instead of
slot^2. Full attention within an image does not depend on the order, so the patches stay in
window order through every block and go back to slot order before the merger.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from catts_jax.models.qwen2_5_vl import stack
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


def window_order(patch_pos: jax.Array, patch_image: jax.Array, cfg: VisionConfig):
  """Per slot, the patch order that makes each window contiguous, and its window ids.

  From patch_pos [I, S, 2] and patch_image [I, S] (-1 = padding): order [I, S], the slot
  position of each patch in window order (merge blocks sorted stably by (image, window row,
  window col), padding last; a block's patches stay together and in order), and segments
  [I, S], the window id of each patch in window order (padding forms one more window).
  """
  unit = cfg.spatial_merge_size**2
  slots, size = patch_image.shape
  image = patch_image[:, ::unit]  # a merge block's patches share image and window
  image = jnp.where(image < 0, jnp.iinfo(jnp.int32).max, image)
  window = patch_pos[:, ::unit] // cfg.window_patches
  iota = jnp.broadcast_to(jnp.arange(size // unit, dtype=jnp.int32), image.shape)
  keys = (image, window[..., 0], window[..., 1])
  *sorted_keys, units = jax.lax.sort((*keys, iota), dimension=1, num_keys=4)
  changed = jnp.zeros((slots, size // unit), bool)
  for key in sorted_keys:
    changed = changed | (key != jnp.roll(key, 1, axis=1))
  segments = jnp.cumsum(changed.at[:, 0].set(False), axis=1)
  order = (units[:, :, None] * unit + jnp.arange(unit)).reshape(slots, size)
  return order, jnp.repeat(segments, unit, axis=1)


def gather_patches(x: jax.Array, order: jax.Array) -> jax.Array:
  """x [I, S, ...] -> x[i, order[i]] per slot (no data crosses slots)."""
  return jnp.take_along_axis(x, order.reshape(*order.shape, *[1] * (x.ndim - 2)), axis=1)


def window_attention(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array, block: int):
  """q, k, v [I, S, N, H] in window order; segments [I, S] window ids -> [I, S, N, H].

  Each window is a contiguous run of <= `block` patches, so it lies within two aligned
  blocks: query block b attends to key blocks b-1, b and b+1, masked to its own window.
  The slot is padded to whole blocks; pad queries see only pads, pad blocks no query.
  """
  slots, size, n, h = q.shape
  nb = -(-size // block)
  pad = nb * block - size

  def blocked(x, fill):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return x.reshape(slots, nb, block, *x.shape[2:])

  def neighbours(x, fill):  # [I, nb, P, ...] -> [I, nb, 3P, ...]: blocks b-1, b, b+1
    x = jnp.pad(x, [(0, 0), (1, 1)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return jnp.concatenate([x[:, :-2], x[:, 1:-1], x[:, 2:]], axis=2)

  q_seg = blocked(segments, -1)
  k_seg = neighbours(q_seg, -2)
  mask = (q_seg[..., :, None] == k_seg[..., None, :]).reshape(slots * nb, 1, block, 3 * block)
  q = blocked(q, 0).reshape(slots * nb, block, n, h)
  k = neighbours(blocked(k, 0), 0).reshape(slots * nb, 3 * block, n, h)
  v = neighbours(blocked(v, 0), 0).reshape(slots * nb, 3 * block, n, h)
  out = attention(q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), mask)
  return out.reshape(slots, nb * block, n, h)[:, :size]


class VisionAttention(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.block = cfg.window_patches**2
    self.qkv = Dense((d,), (3, n, h), ("embed", None, "q_heads", "head_dim"), **kw)
    self.proj = Dense((n, h), (d,), ("q_heads", "head_dim", "embed"), **kw)

  def __call__(self, x, cos, sin, mask=None, segments=None, full=True):
    """Full attention under mask [I, 1, S, S] where `full`, else window attention over
    segments [I, S] (x in window order, `window_order`). A traced `full` (a scanned stack)
    branches on the attention core alone, so the projections compile once for both forms."""
    q, k, v = jnp.moveaxis(self.qkv(x), -3, 0)  # each [I, S, N, H]: a batch of images
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    attend_full = lambda q, k, v: attention(q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), mask)  # noqa: E731
    attend_windows = lambda q, k, v: window_attention(q, k, v, segments, self.block)  # noqa: E731
    if isinstance(full, bool):  # known while tracing: only that form is compiled
      out = attend_full(q, k, v) if full else attend_windows(q, k, v)
    else:
      out = jax.lax.cond(full, attend_full, attend_windows, q, k, v)
    return self.proj(out)


class VisionBlock(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.attn = VisionAttention(cfg, **kw)
    self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, use_bias=True, **kw)

  def __call__(self, x, cos, sin, mask=None, segments=None, full=True):
    x = x + self.attn(self.norm1(x), cos, sin, mask, segments, full)
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
    self.remat, self.remat_policy, self.scan_layers = cfg.remat, cfg.remat_policy, cfg.scan_layers
    self.patch_embed = Dense((v.patch_dim,), (v.hidden_size,), (None, "embed"), use_bias=False, **kw)
    # One module, params stacked on a leading "layers" axis (models/qwen2_5_vl/stack.py).
    self.blocks = stack.stack(lambda rngs: VisionBlock(v, **{**kw, "rngs": rngs}), v.depth, rngs)
    self.merger = PatchMerger(v, **kw)

  def __call__(self, pixel_values, patch_pos, patch_image):
    """pixel_values [I, S, C*T*p*p], patch_pos [I, S, 2], patch_image [I, S] -> merged
    features [I * S / merge^2, out_hidden] in slot order: slot i's at [i * S / merge^2, ...),
    padding included (the host's `image_index` points image tokens at the real ones; padding
    features are finite but otherwise unspecified). Each slot is encoded on the device that
    holds it: no feature moves between slots here.

    S must be a multiple of merge^2 (the processor's patches come in whole merge blocks).
    """
    order, segments = window_order(patch_pos, patch_image, self.cfg)
    patch_pos, patch_image = gather_patches(patch_pos, order), gather_patches(patch_image, order)
    cos, sin = vision_cos_sin(patch_pos, self.cfg)
    full_mask = (patch_image[:, :, None] == patch_image[:, None, :])[:, None]

    def run(block, x, full):
      """One block: full attention within each image where `full`, else window attention."""
      return constrain(block(x, cos, sin, full_mask, segments, full), SLOTS)

    full = [i in self.cfg.fullatt_block_indexes for i in range(self.cfg.depth)]
    x = constrain(gather_patches(self.patch_embed(pixel_values), order), SLOTS)
    if self.scan_layers:  # one block body (both forms, chosen by each block's flag)
      x = stack.scan(self.blocks, run, x, jnp.asarray(full), remat=self.remat, policy=self.remat_policy)
    else:  # straight-line code, each block compiled with its own form
      for block, block_full in zip(stack.unstack(self.blocks), full, strict=True):
        one = lambda block, x, full=block_full: run(block, x, full)  # noqa: E731
        x = (nnx.remat(one, policy=stack.remat_policy(self.remat_policy)) if self.remat else one)(block, x)
    return self.merger(gather_patches(x, jnp.argsort(order, axis=1)))
