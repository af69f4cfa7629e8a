"""Qwen2.5-VL for conditional generation: vision tower + splice + decoder + LM head.

Also the host-side (numpy) M-RoPE position index, computed once per batch outside jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from catts_jax.models.qwen2_5_vl.config import ModelConfig
from catts_jax.models.qwen2_5_vl.layers import default_init, param
from catts_jax.models.qwen2_5_vl.text import HIDDEN, Cache, TextModel
from catts_jax.models.qwen2_5_vl.vision import VisionTransformer
from catts_jax.sharding import constrain


class Qwen2_5_VL(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.visual = VisionTransformer(cfg, rngs=rngs)
    self.language_model = TextModel(cfg, rngs=rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = param(
        rngs,
        default_init,
        (cfg.text.hidden_size, cfg.text.vocab_size),
        ("embed", "vocab"),
        jnp.dtype(cfg.param_dtype),
      )

  def image_features(self, pixel_values, patch_pos, patch_image) -> jax.Array:
    """Merged vision features of every slot, [I * S / merge^2, D] in the compute dtype (see
    `visual`). Slots may be sharded over devices: every row may read any slot, so the (small)
    features are gathered whole."""
    features = self.visual(pixel_values, patch_pos, patch_image).astype(self.cfg.compute_dtype)
    return constrain(features, (None, "activation_embed"))

  def embed(
    self,
    input_ids,
    pixel_values=None,
    patch_pos=None,
    patch_image=None,
    image_index=None,
    image_features=None,
  ) -> jax.Array:
    """Token embeddings with image features spliced in at `image_token_id`.

    The vision tower encodes each slot once (`image_features`); an image token reads feature
    `image_index` (computed on the host, `processing.image_token_index`), so rows that share an
    image read the same slot. `image_features`: features computed beforehand, in place of
    the pixels (the train step encodes once for all its micro-batches).
    """
    embeds = self.language_model.embed(input_ids)
    if image_features is None and pixel_values is not None:
      image_features = self.image_features(pixel_values, patch_pos, patch_image)
    if image_features is None:
      return embeds
    features = image_features.astype(embeds.dtype)
    is_image = input_ids == self.cfg.image_token_id
    return jnp.where(is_image[..., None], constrain(features[image_index], HIDDEN), constrain(embeds, HIDDEN))

  def logits(self, hidden: jax.Array) -> jax.Array:
    """LM head in float32 output precision."""
    if self.cfg.tie_word_embeddings:
      kernel = self.language_model.embed_tokens[...].T
    else:
      kernel = self.lm_head[...]
    dtype = self.cfg.compute_dtype
    return jnp.dot(hidden.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)

  def hidden_states(
    self,
    input_ids: jax.Array,
    positions: jax.Array,
    attention_mask: jax.Array,
    pixel_values: jax.Array | None = None,
    patch_pos: jax.Array | None = None,
    patch_image: jax.Array | None = None,
    image_index: jax.Array | None = None,
    cache: Cache | None = None,
    image_features: jax.Array | None = None,
  ) -> tuple[jax.Array, Cache | None]:
    """Final-norm hidden states [B, T, D] (see `__call__`); callers that need logits at only
    some positions (scoring, the last prompt token) apply `logits` to a slice.
    `image_features`: the slots' merged features (`image_features`) in place of the pixels."""
    embeds = self.embed(input_ids, pixel_values, patch_pos, patch_image, image_index, image_features)
    return self.language_model(embeds, positions, attention_mask.astype(bool), cache)

  def __call__(
    self,
    input_ids,
    positions,
    attention_mask,
    pixel_values=None,
    patch_pos=None,
    patch_image=None,
    image_index=None,
    cache=None,
  ) -> tuple[jax.Array, Cache | None]:
    """input_ids [B, T], positions [3, B, T], attention_mask [B, T] -> logits [B, T, V], cache.

    With images: pixel_values [I, S, C*T*p*p], patch_pos [I, S, 2], patch_image [I, S] (one
    image per slot, `processing.image_slots`) and image_index [B, T] (`embed`). With a cache,
    the T new tokens are written at `cache["end_index"]` and attend to all valid earlier slots.
    """
    hidden, cache = self.hidden_states(
      input_ids, positions, attention_mask, pixel_values, patch_pos, patch_image, image_index, cache
    )
    return self.logits(hidden), cache


def get_rope_index(
  input_ids: np.ndarray,
  attention_mask: np.ndarray,
  image_grid_thw: np.ndarray | None,
  *,
  image_token_id: int,
  spatial_merge_size: int,
) -> tuple[np.ndarray, np.ndarray]:
  """3-D rotary positions [3, B, T] and rope deltas [B] (int32), as transformers computes them.

  Text tokens advance all three axes together; an image's tokens get (t, row, col) offsets
  from the position where it starts, and the text after it resumes at start + max(h, w).
  Padding (mask 0) gets position 0. Images are consumed in order across the batch.
  `delta = max position + 1 - number of valid tokens` continues positions during decoding.
  """
  input_ids = np.asarray(input_ids)
  attention_mask = np.asarray(attention_mask).astype(bool)
  grids = [] if image_grid_thw is None else [tuple(int(x) for x in g) for g in image_grid_thw]
  batch, length = input_ids.shape
  positions = np.zeros((3, batch, length), np.int32)
  deltas = np.zeros((batch,), np.int32)
  next_image = 0
  for b in range(batch):
    ids = input_ids[b][attention_mask[b]]
    is_image = ids == image_token_id
    row = np.zeros((3, len(ids)), np.int64)
    pos, i = 0, 0
    while i < len(ids):
      if not is_image[i]:
        row[:, i] = pos
        pos, i = pos + 1, i + 1
        continue
      if next_image >= len(grids):
        raise ValueError(
          f"row {b}: more image tokens than images (token {i} of the row starts image "
          f"#{next_image}, but only {len(grids)} image grid(s) were given)"
        )
      t, h, w = grids[next_image]
      h, w = h // spatial_merge_size, w // spatial_merge_size
      n = t * h * w
      if i + n > len(ids) or not is_image[i : i + n].all():
        raise ValueError(
          f"row {b}: image #{next_image} (grid {grids[next_image]}) needs {n} consecutive "
          f"image tokens at token {i}, found {int(is_image[i : i + n].sum())}"
        )
      tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
      row[:, i : i + n] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos
      pos, i = pos + max(h, w), i + n
      next_image += 1
    positions[:, b, attention_mask[b]] = row
    deltas[b] = (row.max() + 1 - len(ids)) if len(ids) else 0
  if next_image != len(grids):
    raise ValueError(f"{len(grids)} images given but the prompts hold image tokens for {next_image}")
  return positions, deltas
