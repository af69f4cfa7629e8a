"""Building blocks shared by the vision tower and the language model.

Every param is an `nnx.Param` carrying `logical_axes` metadata (one name or None per dim);
`catts_jax.sharding` maps these names to mesh axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]

default_init = nnx.initializers.normal(stddev=0.02)


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes, dtype) -> nnx.Param:
  if len(shape) != len(axes):
    raise ValueError(f"shape {tuple(shape)} and logical axes {axes} differ in rank")
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(axes))


class Dense(nnx.Module):
  """y = x . kernel (+ bias), contracting the last `len(in_shape)` dims of x.

  Multi-dim in/out shapes keep heads as their own axis ([embed, heads, head_dim]) so that
  they can be sharded by name.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    axes: Axes,
    *,
    use_bias: bool,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
  ):
    self.in_ndim = len(in_shape)
    self.dtype = dtype
    self.kernel = param(rngs, default_init, (*in_shape, *out_shape), axes, param_dtype)
    self.bias = (
      param(rngs, nnx.initializers.zeros, out_shape, axes[self.in_ndim :], param_dtype) if use_bias else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    y = jnp.tensordot(x, self.kernel[...].astype(self.dtype), axes=self.in_ndim)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """Normalises in float32, as the reference does, then scales and casts to `dtype`."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs):
    del rngs
    self.eps = eps
    self.dtype = dtype
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (self.weight[...].astype(self.dtype) * x32.astype(self.dtype)).astype(self.dtype)


class GatedMLP(nnx.Module):
  """SwiGLU: down(act(gate(x)) * up(x)); the vision tower's variant has biases."""

  def __init__(self, dim: int, hidden: int, *, use_bias: bool, dtype, param_dtype, rngs):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Dense((dim,), (hidden,), ("embed", "mlp"), **kw)
    self.up_proj = Dense((dim,), (hidden,), ("embed", "mlp"), **kw)
    self.down_proj = Dense((hidden,), (dim,), ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: [..., T, heads, head_dim]; cos/sin: [..., T, head_dim] (float32)."""
  x32 = x.astype(jnp.float32)
  cos, sin = cos[..., None, :], sin[..., None, :]
  return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def inverse_frequencies(dim: int, theta: float) -> jax.Array:
  return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def _broadcast_kv(x: jax.Array, query_dims: int) -> jax.Array:
  """[B, K, a, b] -> [B, K, 1 x query_dims, a, b], to meet queries [B, K, *query, ...]."""
  return x.reshape(x.shape[:2] + (1,) * query_dims + x.shape[2:])


def logits_by_reduce(q: jax.Array, k_t: jax.Array) -> jax.Array:
  f32 = jnp.float32
  return (q[..., None].astype(f32) * _broadcast_kv(k_t, q.ndim - 3).astype(f32)).sum(-2)


def logits_by_matmul(q: jax.Array, k_t: jax.Array) -> jax.Array:
  return jnp.einsum("bk...h,bkhs->bk...s", q, k_t, preferred_element_type=jnp.float32)


def mix_by_reduce(probs: jax.Array, v: jax.Array) -> jax.Array:
  return (probs[..., None] * _broadcast_kv(v, probs.ndim - 3)).sum(-2)


def mix_by_matmul(probs: jax.Array, v: jax.Array) -> jax.Array:
  return jnp.einsum("bk...s,bksh->bk...h", probs, v)


def decode_logits(q: jax.Array, k_t: jax.Array) -> jax.Array:
  """One decode step's attention logits, float32: q [B, K, *query, H] . k_t [B, K, H, S] ->
  [B, K, *query, S] (unscaled). On CPU a fused multiply-and-reduce: its B*K products of
  [G, H] x [H, S] are too small for matmul kernels (XLA:CPU runs them ~4x slower). Elsewhere
  a batched matmul: on TPU the multiply-and-reduce broadcasts the cache in float32 per query
  head (the 7B's planned decode on v5e:4x4: 1 GB more temporaries)."""
  return jax.lax.platform_dependent(q, k_t, cpu=logits_by_reduce, default=logits_by_matmul)


def decode_mix(probs: jax.Array, v: jax.Array) -> jax.Array:
  """One decode step's values: probs [B, K, *query, S] . v [B, K, S, H] -> [B, K, *query, H],
  by platform as `decode_logits`."""
  return jax.lax.platform_dependent(probs, v, cpu=mix_by_reduce, default=mix_by_matmul)


def _attend(q: jax.Array, k_t: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """q: [B, K, G, T, H], mask [B, 1, T, S] -> [B, K, G, T, H], all queries at once."""
  scale = q.shape[-1] ** -0.5
  decoding = q.shape[3] == 1
  if decoding:
    logits = decode_logits(q, k_t) * scale
  else:
    logits = jnp.einsum("bkgth,bkhs->bkgts", q, k_t, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  if decoding:
    return decode_mix(probs, v)
  return jnp.einsum("bkgts,bksh->bkgth", probs, v)


def attention_shared_prompt(
  q: jax.Array,
  prompt_k_t: jax.Array,
  prompt_v: jax.Array,
  prompt_mask: jax.Array,
  k_t: jax.Array,
  v: jax.Array,
  mask: jax.Array,
) -> jax.Array:
  """One decode step's attention when each prompt's N rows share its KV: q [B, 1, N, H] with
  a prompt's B / P rows adjacent; the prompts' keys prompt_k_t [P, K, H, S_p], values
  prompt_v [P, K, S_p, H] and mask [P, 1, 1, S_p]; each row's own reply slots k_t [B, K, H, S],
  v [B, K, S, H], mask [B, 1, 1, S]. One softmax over both; equals `attention` over the
  prompt's slots repeated for every row followed by the row's own.

  A prompt's rows query its keys together, in one product (also what makes it fast on a CPU,
  where each row's own [G, H] x [H, S] product is too small for matmul kernels)."""
  b, t, n, h = q.shape
  prompts, kv_heads, _, prompt_slots = prompt_k_t.shape
  g, rows = n // kv_heads, b // prompts
  q = q.reshape(b, kv_heads, g, h)

  def per_prompt(x):  # [B, K, G, ...] -> [P, K, rows * G, ...]
    x = x.reshape(prompts, rows, kv_heads, g, *x.shape[3:]).swapaxes(1, 2)
    return x.reshape(prompts, kv_heads, rows * g, *x.shape[4:])

  def per_row(x):  # the inverse
    x = x.reshape(prompts, kv_heads, rows, g, *x.shape[3:]).swapaxes(1, 2)
    return x.reshape(b, kv_heads, g, *x.shape[4:])

  f32, scale = jnp.float32, h**-0.5
  on_prompt = per_row(jnp.einsum("pkqh,pkhs->pkqs", per_prompt(q), prompt_k_t, preferred_element_type=f32))
  on_prompt = jnp.where(jnp.repeat(prompt_mask, rows, axis=0), on_prompt * scale, jnp.finfo(f32).min)
  on_reply = decode_logits(q, k_t)  # the row's own slots
  on_reply = jnp.where(mask, on_reply * scale, jnp.finfo(f32).min)
  probs = jax.nn.softmax(jnp.concatenate([on_prompt, on_reply], axis=-1), axis=-1).astype(v.dtype)
  out = per_row(jnp.einsum("pkqs,pksh->pkqh", per_prompt(probs[..., :prompt_slots]), prompt_v))
  out = out + decode_mix(probs[..., prompt_slots:], v)
  return out.reshape(b, t, n, h)


def attention(
  q: jax.Array, k_t: jax.Array, v: jax.Array, mask: jax.Array, *, query_chunk: int = 512
) -> jax.Array:
  """q: [B, T, N, H]; k_t: [B, K, H, S] (keys transposed); v: [B, K, S, H]; mask: [B, 1, T, S]
  bool; N % K == 0 (GQA). Returns [B, T, N, H].

  Query head n reads key/value head n // (N // K), as transformers' repeat_kv does. The
  key/value layouts are those of the KV cache and are chosen so that both products are
  plain batched matmuls over (B, K): XLA then never transposes the cache, which would
  otherwise cost a full copy of it per layer and decode step.

  Rows longer than 2 * query_chunk are attended ~query_chunk queries at a time, each chunk
  against all keys (so the softmax is exact) and rematerialised in the backward: the float32
  logits then never exceed [B, N, chunk, S] instead of [B, N, T, S], and the backward keeps
  only each chunk's queries, not its probabilities.
  """
  b, t, n, h = q.shape
  kv_heads = k_t.shape[1]
  g = n // kv_heads
  if t <= 2 * query_chunk:
    q = q.reshape(b, t, kv_heads, g, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    return _attend(q, k_t, v, mask).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
  num_chunks = -(-t // query_chunk)
  chunk = -(-t // num_chunks)  # equal chunks; padding < num_chunks queries
  pad = num_chunks * chunk - t
  if pad:
    # Padded queries see no key (a uniform softmax over garbage) and are dropped below.
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)))
  q = q.reshape(b, num_chunks, chunk, kv_heads, g, h).transpose(1, 0, 3, 4, 2, 5)  # [C, B, K, G, c, H]

  @jax.checkpoint
  def one_chunk(xs):
    q_chunk, start = xs
    mask_chunk = jax.lax.dynamic_slice_in_dim(mask, start, chunk, axis=2)
    return _attend(q_chunk, k_t, v, mask_chunk)

  starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
  out = jax.lax.map(one_chunk, (q, starts))  # [C, B, K, G, c, H]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, num_chunks * chunk, n, h)
  return out[:, :t]
