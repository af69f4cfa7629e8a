"""What would sharing a prompt's KV among its N samples save in a decode step's attention? The
sampler today repeats the prompt's cache for each of a prompt's N rows (`sampling._repeat_rows`)
and each row reads its own copy every step. Shared, a prompt's N rows read one copy: their
queries become one product against it, joined with each row's own reply slots in one softmax.
One layer's decode attention of the bench model's shape (2 KV heads, 4 query heads each, head
dim 64), both forms on the same keys and values: medians of 30 calls, and the largest
difference between them.

  python docs/experiments/shared_prompt_attention.py docs/reports/shared_prompt_attention/report.json
"""

import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

from catts_jax import runs
from catts_jax.models.qwen2_5_vl.layers import _attend

KV_HEADS, GROUP, HEAD_DIM = 2, 4, 64
CASES = ((2, 16, 512, 64), (2, 16, 1024, 256), (8, 4, 512, 64))  # prompts, N, prompt slots, reply slots


def shared_attention(q, k_prompt, v_prompt, k_reply, v_reply, n: int):
  """q [rows, K, G, 1, H] (each prompt's n rows adjacent); k_prompt [prompts, K, H, P] and
  v_prompt [prompts, K, P, H] once per prompt; k_reply [rows, K, H, R], v_reply [rows, K, R, H]."""
  rows, k, g, _, h = q.shape
  prompts, p = k_prompt.shape[0], k_prompt.shape[-1]

  def per_prompt(x):  # [rows, K, G, ...] -> [prompts, K, n * G, ...]
    return x.reshape(prompts, n, k, g, *x.shape[3:]).swapaxes(1, 2).reshape(prompts, k, n * g, *x.shape[3:])

  def per_row(x):  # the inverse
    return x.reshape(prompts, k, n, g, *x.shape[3:]).swapaxes(1, 2).reshape(rows, k, g, *x.shape[3:])

  scale = h**-0.5
  on_prompt = per_row(jnp.einsum("pkqh,pkhs->pkqs", per_prompt(q[:, :, :, 0]), k_prompt))[:, :, :, None]
  on_reply = (q[..., None] * k_reply[:, :, None, None]).sum(-2)
  probs = jax.nn.softmax(jnp.concatenate([on_prompt, on_reply], axis=-1) * scale, axis=-1)
  out = per_row(jnp.einsum("pkqs,pksh->pkqh", per_prompt(probs[:, :, :, 0, :p]), v_prompt))[:, :, :, None]
  return out + (probs[..., p:, None] * v_reply[:, :, None, None]).sum(-2)


def median_ms(fn, *args, calls: int = 30) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(calls):
    began = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - began)
  return sorted(times)[calls // 2] * 1e3


def main(out: str) -> None:
  jax.config.update("jax_default_matmul_precision", "highest")
  report = {"cases": []}
  for prompts, n, p, r in CASES:
    rows = prompts * n
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (rows, KV_HEADS, GROUP, 1, HEAD_DIM))
    k_prompt = jax.random.normal(keys[1], (prompts, KV_HEADS, HEAD_DIM, p))
    v_prompt = jax.random.normal(keys[2], (prompts, KV_HEADS, p, HEAD_DIM))
    k_reply = jax.random.normal(keys[3], (rows, KV_HEADS, HEAD_DIM, r))
    v_reply = jax.random.normal(keys[4], (rows, KV_HEADS, r, HEAD_DIM))
    k_all = jnp.concatenate([jnp.repeat(k_prompt, n, axis=0), k_reply], axis=-1)  # the sampler's layout
    v_all = jnp.concatenate([jnp.repeat(v_prompt, n, axis=0), v_reply], axis=2)
    mask = jnp.ones((rows, 1, 1, p + r), bool)
    repeated = jax.jit(_attend)
    shared = jax.jit(functools.partial(shared_attention, n=n))
    want = repeated(q, k_all, v_all, mask)
    got = shared(q, k_prompt, v_prompt, k_reply, v_reply)
    case = {
      "prompts": prompts,
      "n": n,
      "prompt_slots": p,
      "reply_slots": r,
      "repeated_ms": median_ms(repeated, q, k_all, v_all, mask),
      "shared_ms": median_ms(shared, q, k_prompt, v_prompt, k_reply, v_reply),
      "max_abs_difference": float(jnp.abs(got - want).max()),
    }
    case["speedup"] = case["repeated_ms"] / case["shared_ms"]
    print(case, flush=True)
    report["cases"].append(case)
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  runs.write_json(out, report)


if __name__ == "__main__":
  main(*sys.argv[1:])
