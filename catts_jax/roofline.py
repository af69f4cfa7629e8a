"""Analytic FLOP / byte counts for the language model and on-the-spot machine ceilings.

Used by the benchmarks to say how close a measured time is to what the hardware allows:
a step cannot beat max(FLOPs / matmul ceiling, bytes read / memory bandwidth).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from catts_jax.models.qwen2_5_vl.config import ModelConfig


def text_matmul_params(cfg: ModelConfig) -> int:
  """Weights that every token multiplies through: decoder projections and the LM head."""
  t = cfg.text
  attn = t.hidden_size * t.head_dim * (2 * t.num_heads + 2 * t.num_kv_heads)
  mlp = 3 * t.hidden_size * t.intermediate_size
  return t.num_layers * (attn + mlp) + t.hidden_size * t.vocab_size


def text_flops(cfg: ModelConfig, tokens: int, context: float, logits_tokens: int | None = None) -> float:
  """Forward FLOPs of `tokens` tokens, each attending to `context` keys on average, with the
  LM head applied to `logits_tokens` of them (default all)."""
  t = cfg.text
  logits_tokens = tokens if logits_tokens is None else logits_tokens
  head = t.hidden_size * t.vocab_size
  dense = 2 * (text_matmul_params(cfg) - head) * tokens + 2 * head * logits_tokens
  attention = 4 * t.num_layers * t.num_heads * t.head_dim * context * tokens  # QK^T and PV
  return float(dense + attention)


def vision_flops(cfg: ModelConfig, patches: int, window_tokens: int) -> float:
  """Vision tower FLOPs for `patches` patches (window blocks see `window_tokens` keys)."""
  v = cfg.vision
  d, f = v.hidden_size, v.intermediate_size
  per_block = 2 * patches * (4 * d * d + 3 * d * f)
  full = len(v.fullatt_block_indexes)
  attention = 4 * d * patches * (full * patches + (v.depth - full) * window_tokens)
  merged = patches // v.spatial_merge_size**2
  merger = 2 * merged * (d * 4) * (d * 4 + v.out_hidden_size)
  return float(2 * patches * v.patch_dim * d + v.depth * per_block + attention + merger)


def weight_bytes(cfg: ModelConfig, dtype_bytes: int) -> float:
  """Bytes of weights a decode step reads (matmul weights; embedding rows are negligible)."""
  return float(text_matmul_params(cfg) * dtype_bytes)


def kv_bytes(cfg: ModelConfig, rows: int, context: float, dtype_bytes: int) -> float:
  t = cfg.text
  return float(2 * t.num_layers * rows * context * t.num_kv_heads * t.head_dim * dtype_bytes)


def scoring_cost(
  cfg: ModelConfig,
  rows: int,
  length: int,
  image_patches: int,
  dtype_bytes: int,
  ceiling: float,
  bandwidth: float,
) -> tuple[float, float]:
  """(FLOPs, floor seconds) of teacher-forced scoring of `rows` rows of `length` tokens, each
  with one `image_patches`-patch image when nonzero: one forward, log-probs at all but the last
  position; the floor is max(FLOPs / ceiling, weights read / bandwidth)."""
  flops = text_flops(cfg, rows * length, (length + 1) / 2, rows * (length - 1))
  if image_patches:
    window = min(image_patches, cfg.vision.window_patches**2)
    flops += rows * vision_flops(cfg, image_patches, window)
  return flops, max(flops / ceiling, weight_bytes(cfg, dtype_bytes) / bandwidth)


def generation_cost(
  cfg: ModelConfig,
  rows: int,
  prompt_len: int,
  new_tokens: int,
  dtype_bytes: int,
  ceiling: float,
  bandwidth: float,
) -> tuple[float, float]:
  """(FLOPs, floor seconds) of sampling `new_tokens` tokens after `rows` prompts of
  `prompt_len` tokens: a prefill (LM head on the last position only, compute-bound), then one
  step per further token, each max(FLOPs / ceiling, (weights + KV cache) read / bandwidth)."""
  flops = text_flops(cfg, rows * prompt_len, (prompt_len + 1) / 2, rows)
  floor = flops / ceiling
  for i in range(1, new_tokens):
    step_flops = text_flops(cfg, rows, prompt_len + i)
    step_bytes = weight_bytes(cfg, dtype_bytes) + kv_bytes(cfg, rows, prompt_len + i, dtype_bytes)
    flops += step_flops
    floor += max(step_flops / ceiling, step_bytes / bandwidth)
  return flops, floor


def _median_time(fn, repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure_matmul_flops(n: int = 2048, dtype=jnp.float32, repeats: int = 10) -> float:
  """FLOP/s of a square jitted matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  seconds = _median_time(lambda: f(a, b).block_until_ready(), repeats)
  return 2 * n**3 / seconds


def measure_read_bandwidth(megabytes: int = 1024, repeats: int = 15) -> float:
  """Bytes/s of a jitted full reduction over a large float32 array (reads dominate)."""
  x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  seconds = _median_time(lambda: f(x).block_until_ready(), repeats)
  return x.size * 4 / seconds


def measure_torch_matmul_flops(n: int = 2048, device: str = "cpu", dtype=None, repeats: int = 10) -> float:
  import torch

  dtype = dtype or torch.float32
  a = torch.randn(n, n, device=device, dtype=dtype)
  b = torch.randn(n, n, device=device, dtype=dtype)

  def run():
    a @ b
    if device != "cpu":
      torch.cuda.synchronize()

  return 2 * n**3 / _median_time(run, repeats)
