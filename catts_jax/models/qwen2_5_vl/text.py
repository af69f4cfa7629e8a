"""Qwen2 decoder with M-RoPE and a functional KV cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from catts_jax.models.qwen2_5_vl import stack
from catts_jax.models.qwen2_5_vl.config import ModelConfig, TextConfig
from catts_jax.models.qwen2_5_vl.layers import (
  Dense,
  GatedMLP,
  RMSNorm,
  apply_rope,
  attention,
  attention_shared_prompt,
  default_init,
  inverse_frequencies,
  param,
)
from catts_jax.sharding import constrain

# Logical axes of the activations at layer boundaries (rules: catts_jax/sharding.py).
HIDDEN = ("batch", "length", "activation_embed")
Q_HEADS = ("batch", "length", "q_heads", "head_dim")
KV_HEADS = ("batch", "length", "kv_heads", "head_dim")

# A KV cache is a plain pytree, so it can be donated to jit:
#   {"layers": [{"k": [B, K, H, S], "v": [B, K, S, H]}, ...],  (layouts: see layers.attention)
#    "valid": [B, S] bool (slot holds a real token), "end_index": int32 (next slot to write)}
# A decode cache may also hold "prompt": {"layers": ..., "valid": [P, S_p]}, the KV of P prompts
# each shared by its B / P adjacent rows (read by every step, never written); the slots above
# are then the rows' own.
Cache = dict


def init_cache(cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> Cache:
  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
  v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  return {
    "layers": [
      {"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype)} for _ in range(cfg.num_layers)
    ],
    "valid": jnp.zeros((batch, max_len), bool),
    "end_index": jnp.zeros((), jnp.int32),
  }


def mrope_cos_sin(positions: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
  """positions [3, B, T] (temporal, height, width) -> cos, sin [B, T, head_dim] float32.

  The rotary frequencies are split into `mrope_section` chunks; chunk i rotates by the
  position along axis i % 3.
  """
  inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta)
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, head_dim/2]
  chunks, start = [], 0
  for i, size in enumerate(cfg.mrope_section):
    chunks.append(freqs[i % 3, ..., start : start + size])
    start += size
  freqs = jnp.concatenate(chunks, axis=-1)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def attention_mask(key_valid: jax.Array, query_offset, num_queries: int) -> jax.Array:
  """Causal mask over keys [B, S]: query i (at slot query_offset + i) sees valid keys j <= it."""
  key_pos = jnp.arange(key_valid.shape[1])
  query_pos = query_offset + jnp.arange(num_queries)
  causal = key_pos[None, :] <= query_pos[:, None]  # [T, S]
  return (causal[None] & key_valid[:, None, :])[:, None]  # [B, 1, T, S]


class Attention(nnx.Module):
  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Dense((d,), (n, h), ("embed", "q_heads", "head_dim"), use_bias=True, **kw)
    self.k_proj = Dense((d,), (k, h), ("embed", "kv_heads", "head_dim"), use_bias=True, **kw)
    self.v_proj = Dense((d,), (k, h), ("embed", "kv_heads", "head_dim"), use_bias=True, **kw)
    self.o_proj = Dense((n, h), (d,), ("q_heads", "head_dim", "embed"), use_bias=False, **kw)

  def __call__(self, x, cos, sin, mask, layer_cache=None, end_index=None, prompt=None):
    """`prompt`: (its layer's cache {"k", "v"}, its mask): a shared prompt (see `Cache`)."""
    q = constrain(apply_rope(self.q_proj(x), cos, sin), Q_HEADS)
    k = constrain(apply_rope(self.k_proj(x), cos, sin), KV_HEADS).transpose(0, 2, 3, 1)  # [B, K, H, T]
    v = constrain(self.v_proj(x), KV_HEADS).transpose(0, 2, 1, 3)  # [B, K, T, H]
    if layer_cache is not None:
      k_all = jax.lax.dynamic_update_slice(
        layer_cache["k"], k.astype(layer_cache["k"].dtype), (0, 0, 0, end_index)
      )
      v_all = jax.lax.dynamic_update_slice(
        layer_cache["v"], v.astype(layer_cache["v"].dtype), (0, 0, end_index, 0)
      )
      layer_cache = {"k": k_all, "v": v_all}
      k, v = k_all.astype(q.dtype), v_all.astype(q.dtype)
    if prompt is not None:
      (shared, shared_mask), dtype = prompt, q.dtype
      out = attention_shared_prompt(
        q, shared["k"].astype(dtype), shared["v"].astype(dtype), shared_mask, k, v, mask
      )
      return self.o_proj(out), layer_cache
    return self.o_proj(attention(q, k, v, mask)), layer_cache


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.self_attn = Attention(cfg, **kw)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, use_bias=False, **kw)

  def __call__(self, x, cos, sin, mask, layer_cache=None, end_index=None, prompt=None):
    h, layer_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_cache, end_index, prompt)
    x = x + h
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, HIDDEN), layer_cache


class TextModel(nnx.Module):
  """Embeddings, decoder stack and final norm; the LM head lives on the full model."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    t = cfg.text
    dtype, param_dtype = cfg.compute_dtype, jnp.dtype(cfg.param_dtype)
    self.cfg = t
    self.dtype = dtype
    self.remat, self.remat_policy, self.scan_layers = cfg.remat, cfg.remat_policy, cfg.scan_layers
    self.embed_tokens = param(
      rngs, default_init, (t.vocab_size, t.hidden_size), ("vocab", "embed"), param_dtype
    )
    # One module, params stacked on a leading "layers" axis (models/qwen2_5_vl/stack.py).
    self.layers = stack.stack(
      lambda rngs: DecoderLayer(t, dtype=dtype, param_dtype=param_dtype, rngs=rngs), t.num_layers, rngs
    )
    self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def unstack_layers(self) -> None:
    """Hold the decoder layers as separate modules, for a KV-cached decode loop traced after
    this call: each layer's weights are sliced out of the stack once, not at every step."""
    if not isinstance(self.layers, nnx.List):
      self.layers = stack.unstack(self.layers)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)

  def __call__(self, embeds, positions, token_valid, cache: Cache | None = None):
    """embeds [B, T, D], positions [3, B, T], token_valid [B, T] -> hidden [B, T, D], cache."""
    cos, sin = mrope_cos_sin(positions, self.cfg)
    x = constrain(embeds.astype(self.dtype), HIDDEN)
    if cache is None:
      mask = attention_mask(token_valid, 0, x.shape[1])
      run = lambda layer, x, _: layer(x, cos, sin, mask)[0]  # noqa: E731
      x = stack.scan(
        self.layers, run, x, remat=self.remat, policy=self.remat_policy, unroll=not self.scan_layers
      )
      return self.norm(x), None

    end = cache["end_index"]
    valid = jax.lax.dynamic_update_slice(cache["valid"], token_valid, (0, end))
    mask = attention_mask(valid, end, x.shape[1])
    if isinstance(self.layers, nnx.List):  # a decode step (`unstack_layers`): caches updated in place
      shared = cache.get("prompt")
      prompt_mask = None if shared is None else shared["valid"][:, None, None]
      new_layers = []
      for i, (layer, layer_cache) in enumerate(zip(self.layers, cache["layers"], strict=True)):
        prompt = None if shared is None else (shared["layers"][i], prompt_mask)
        x, layer_cache = layer(x, cos, sin, mask, layer_cache, end, prompt)
        new_layers.append(layer_cache)
    else:  # a prefill: one scanned layer body (the 7B's compiles ~4x faster than 28 unrolled)
      if "prompt" in cache:
        raise ValueError("a cache with a shared prompt is for decode steps (unstack_layers first)")
      run = lambda layer, x, layer_cache: layer(x, cos, sin, mask, layer_cache, end)  # noqa: E731
      stacked = jax.tree.map(lambda *a: jnp.stack(a), *cache["layers"])
      x, stacked = stack.scan_outputs(self.layers, run, x, stacked, unroll=not self.scan_layers)
      new_layers = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(len(cache["layers"]))]
    new_cache = {"layers": new_layers, "valid": valid, "end_index": end + x.shape[1]}
    if "prompt" in cache:
      new_cache["prompt"] = cache["prompt"]
    return self.norm(x), new_cache
