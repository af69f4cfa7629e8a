"""How many rows should a CPU attend at once? `layers.attention` over B rows forms float32
logits [B, N, T, S]; past a few MiB they leave the caches and every pass over them (mask,
softmax, the mix) goes to memory. Here the same attention (the demo policy's 4 query and 2
key/value heads of dim 32, causal) over B rows of T tokens, the rows taken `group` at a time
(`jax.lax.map` over groups, each group one product: `group` = B is all rows at once):
medians of 10 calls, the largest difference from all rows at once, and the group size
`layers.attention` picks on CPU (CPU_LOGITS_BYTES).

  python docs/experiments/cpu_attention_rows.py docs/reports/cpu_attention_rows/report.json
"""

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from catts_jax import runs
from catts_jax.models.qwen2_5_vl import layers

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 32
CASES = ((128, 16), (128, 64), (256, 4), (256, 16), (256, 64), (512, 4), (512, 16), (512, 64))  # T, B
GROUPS = (1, 2, 4, 8, 16, 64)


def all_rows(q, k_t, v, mask):
  return layers._attention_all_rows(q, k_t, v, mask, query_chunk=512)


def in_groups(group: int):
  def fn(q, k_t, v, mask):
    b = q.shape[0]
    split = lambda x: x.reshape(b // group, group, *x.shape[1:])  # noqa: E731
    return jax.lax.map(lambda xs: all_rows(*xs), tuple(split(x) for x in (q, k_t, v, mask))).reshape(q.shape)

  return jax.jit(fn)


def median_ms(fn, *args, calls: int = 10) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(calls):
    began = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - began)
  return sorted(times)[calls // 2] * 1e3


def main(out: str) -> None:
  rng = np.random.default_rng(0)
  report = {"cpu_logits_bytes": layers.CPU_LOGITS_BYTES, "cases": []}
  for t, b in CASES:
    q = jnp.asarray(rng.normal(size=(b, t, HEADS, HEAD_DIM)), jnp.float32)
    k_t = jnp.asarray(rng.normal(size=(b, KV_HEADS, HEAD_DIM, t)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, KV_HEADS, t, HEAD_DIM)), jnp.float32)
    mask = jnp.asarray(np.tril(np.ones((t, t), bool))[None, None].repeat(b, 0))
    ref = jax.jit(all_rows)(q, k_t, v, mask)
    picked = jax.jit(layers.attention)
    case = {
      "tokens": t,
      "rows": b,
      "logits_mib_per_row": 4 * HEADS * t * t / 2**20,
      "ms_by_group": {g: median_ms(in_groups(g), q, k_t, v, mask) for g in GROUPS if g <= b},
      "ms_attention": median_ms(picked, q, k_t, v, mask),
      "max_abs_diff": float(jnp.abs(picked(q, k_t, v, mask) - ref).max()),
    }
    report["cases"].append(case)
    print(case, flush=True)
  runs.write_json(pathlib.Path(out), report)


if __name__ == "__main__":
  main(sys.argv[1])
