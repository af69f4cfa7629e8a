"""The decode loop's KV cache built from prefill caches: image conditions stacked as row groups,
each prompt's rows repeated for its samples, or its prompt kept once and shared by them."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def first_slots(prompt_slots: int, max_new_tokens: int, grow: bool) -> int:
  """Slots (the prompt's included) of the cache a decode starts with: prompt + max_new_tokens,
  or, growing, the prompt and the first step's token rounded up to a power of two (then doubled
  each time it fills)."""
  slots = prompt_slots + max_new_tokens
  return min(slots, 1 << prompt_slots.bit_length()) if grow else slots


def shared_prompt_cache(prefill_cache, n: int, reply_slots: int) -> dict:
  """A decode cache whose prompt part is the prefill's, one copy per prompt, and whose rows'
  own `reply_slots` slots (n rows a prompt, adjacent) start empty (text.Cache)."""
  layers, valid = prefill_cache["layers"], prefill_cache["valid"]
  rows = valid.shape[0] * n
  _, kv_heads, head_dim, _ = layers[0]["k"].shape
  dtype = layers[0]["k"].dtype
  own = [
    {
      "k": jnp.zeros((rows, kv_heads, head_dim, reply_slots), dtype),
      "v": jnp.zeros((rows, kv_heads, reply_slots, head_dim), dtype),
    }
    for _ in layers
  ]
  return {
    "prompt": {"layers": layers, "valid": valid},
    "layers": own,
    "valid": jnp.zeros((rows, reply_slots), bool),
    "end_index": jnp.zeros((), jnp.int32),
  }


def stack_conditions(trees):
  """Stack per-condition prefill results along the batch axis (end_index is shared)."""
  return jax.tree.map(lambda *xs: xs[0] if xs[0].ndim == 0 else jnp.concatenate(xs), *trees)


def repeat_rows(tree, n: int, groups: int):
  """Repeat each prompt's rows n times (within each condition group), keeping scalars."""

  def one(x):
    if x.ndim == 0 or n == 1:
      return x
    g = x.reshape(groups, -1, *x.shape[1:])
    return jnp.repeat(g, n, axis=1).reshape(-1, *x.shape[1:])

  return jax.tree.map(one, tree)
