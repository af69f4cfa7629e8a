"""Long rows attend in query chunks: same result and gradients, and memory linear in length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catts_jax.models.qwen2_5_vl import layers
from catts_jax.models.qwen2_5_vl.layers import attention
from catts_jax.models.qwen2_5_vl.text import attention_mask

B, N, K, H = 2, 4, 2, 8  # GQA: two query heads per key/value head


def reference(q, k_t, v, mask):
  """Plain multi-head attention with the key/value heads repeated (transformers' repeat_kv)."""
  g = q.shape[2] // k_t.shape[1]
  k = jnp.repeat(k_t, g, axis=1)  # [B, N, H, S]
  vv = jnp.repeat(v, g, axis=1)  # [B, N, S, H]
  logits = jnp.einsum("btnh,bnhs->bnts", q, k) * q.shape[-1] ** -0.5
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jnp.einsum("bnts,bnsh->btnh", jax.nn.softmax(logits, axis=-1), vv)


def inputs(t):
  keys = jax.random.split(jax.random.key(t), 4)
  q = jax.random.normal(keys[0], (B, t, N, H), jnp.float32)
  k_t = jax.random.normal(keys[1], (B, K, H, t), jnp.float32)
  v = jax.random.normal(keys[2], (B, K, t, H), jnp.float32)
  cotangent = jax.random.normal(keys[3], (B, t, N, H), jnp.float32)
  # Row 0 left-padded by 5 (its first queries see no key), row 1 right-padded by 9.
  valid = np.ones((B, t), bool)
  valid[0, :5] = False
  valid[1, t - 9 :] = False
  return q, k_t, v, attention_mask(jnp.asarray(valid), 0, t), cotangent


def value_and_grads(fn, q, k_t, v, mask, cotangent):
  def loss(q, k_t, v):
    out = fn(q, k_t, v, mask)
    return jnp.sum(out * cotangent), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k_t, v)
  return out, grads


@pytest.mark.parametrize("t", [64, 61])  # 61: four chunks of 16 with the last 3 queries padded
def test_chunked_attention_equals_unchunked_in_value_and_gradients(t):
  q, k_t, v, mask, cotangent = inputs(t)
  chunked = jax.jit(lambda *a: attention(*a, query_chunk=16))
  assert "scan" in str(jax.make_jaxpr(chunked)(q, k_t, v, mask))  # the chunked path is the one tested
  out, grads = value_and_grads(chunked, q, k_t, v, mask, cotangent)
  for fn in (lambda *a: attention(*a, query_chunk=t), reference):
    out_ref, grads_ref = value_and_grads(jax.jit(fn), q, k_t, v, mask, cotangent)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
      np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-5)


def train_step_temp_bytes(t, query_chunk):
  """Compiled scratch memory of forward + backward through attention for one row of length t."""
  shapes = [(1, t, N, H), (1, K, H, t), (1, K, t, H)]
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes] + [jax.ShapeDtypeStruct((1, 1, t, t), bool)]

  def loss(q, k_t, v, mask):
    return jnp.sum(attention(q, k_t, v, mask, query_chunk=query_chunk) ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_attention_memory_grows_linearly_not_quadratically():
  full = {t: train_step_temp_bytes(t, query_chunk=t) for t in (1024, 2048)}
  chunked = {t: train_step_temp_bytes(t, query_chunk=128) for t in (1024, 2048)}
  # The full form holds [N, T, T] float32 logits (and their backward): 4x per doubling.
  assert full[2048] > 3.5 * full[1024]
  # Chunks hold [N, 128, T]: 2x per doubling, and far below the full form.
  assert chunked[2048] < 2.5 * chunked[1024]
  assert chunked[2048] < full[2048] / 5


@pytest.mark.parametrize("query", [(4, 1), (4,)], ids=["rows", "shared_prompt"])
def test_decode_products_by_platform(query):
  """A decode step's attention products: a multiply-and-reduce on CPU (faster than its tiny
  matmuls there), a batched matmul on TPU (where the other form holds the cache in float32
  per query head); equal to float32 rounding, for queries [B, K, G, 1, H] and [B, K, G, H]."""
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (B, K, *query, H))
  k_t = jax.random.normal(keys[1], (B, K, H, 9))
  v = jax.random.normal(keys[2], (B, K, 9, H))
  probs = jax.nn.softmax(jax.random.normal(keys[3], (B, K, *query, 9)), axis=-1)
  np.testing.assert_allclose(layers.logits_by_reduce(q, k_t), layers.logits_by_matmul(q, k_t), atol=1e-5)
  np.testing.assert_allclose(layers.mix_by_reduce(probs, v), layers.mix_by_matmul(probs, v), atol=1e-6)
  np.testing.assert_allclose(layers.decode_logits(q, k_t), layers.logits_by_reduce(q, k_t), atol=0)

  def products(platform):
    fn = jax.jit(lambda q, k_t, probs, v: (layers.decode_logits(q, k_t), layers.decode_mix(probs, v)))
    return jax.export.export(fn, platforms=[platform])(q, k_t, probs, v).mlir_module()

  assert products("tpu").count("stablehlo.dot_general") == 2
  assert "stablehlo.dot_general" not in products("cpu")
