"""Would a decode loop that scans its layers (one compiled layer body, as the prefill and the
train step have) run as fast as the unrolled one the sampler uses? A bare decoder of the bench
model's text shape (8 layers, hidden 512, 8 heads, 2 KV heads, MLP 1408), 32 rows, one token a
step for 128 steps inside `lax.fori_loop`, KV caches updated in place:

- unrolled: a Python loop over the layers, each cache its own donated buffer (the sampler);
- scanned: `lax.scan` over stacked weights with the stacked caches [L, ...] in its carry,
  each layer writing its token in place and reading its slice.

Medians of 3 timed calls after a first (compiling) one, each form twice in turns; per-token
milliseconds and compile seconds for each cache length.

  python docs/experiments/scanned_decode.py docs/reports/scanned_decode/report.json
"""

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from catts_jax import runs

LAYERS, ROWS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP = 8, 32, 512, 8, 2, 64, 1408
STEPS = 128


def weights(key):
  shapes = dict(
    q=(HIDDEN, HEADS * HEAD_DIM),
    k=(HIDDEN, KV_HEADS * HEAD_DIM),
    v=(HIDDEN, KV_HEADS * HEAD_DIM),
    o=(HEADS * HEAD_DIM, HIDDEN),
    gate=(HIDDEN, MLP),
    up=(HIDDEN, MLP),
    down=(MLP, HIDDEN),
  )
  keys = jax.random.split(key, len(shapes))
  return {n: 0.02 * jax.random.normal(k, (LAYERS, *s)) for k, (n, s) in zip(keys, shapes.items())}


def project(w, x):
  """The new token's query [B, K, G, H], key [B, K, H, 1] and value [B, K, 1, H]."""
  q = (x @ w["q"]).reshape(ROWS, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
  k = (x @ w["k"]).reshape(ROWS, KV_HEADS, HEAD_DIM, 1)
  v = (x @ w["v"]).reshape(ROWS, KV_HEADS, 1, HEAD_DIM)
  return q, k, v


def attend_and_mlp(w, x, q, k_cache, v_cache):
  """Attention over the whole caches [B, K, H, S] and [B, K, S, H], then the MLP."""
  probs = jax.nn.softmax(jnp.einsum("bkgh,bkhs->bkgs", q, k_cache), axis=-1)
  x = x + jnp.einsum("bkgs,bksh->bkgh", probs, v_cache).reshape(ROWS, -1) @ w["o"]
  return x + (jax.nn.silu(x @ w["gate"]) * (x @ w["up"])) @ w["down"]


def unrolled(stacked):
  per_layer = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(LAYERS)]

  def run(x, caches):
    def step(pos, carry):
      x, caches = carry
      new = []
      for w, (k_cache, v_cache) in zip(per_layer, caches, strict=True):
        q, k, v = project(w, x)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k, (0, 0, 0, pos))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v, (0, 0, pos, 0))
        x = attend_and_mlp(w, x, q, k_cache, v_cache)
        new.append((k_cache, v_cache))
      return x, new

    return jax.lax.fori_loop(0, STEPS, step, (x, caches))

  return jax.jit(run, donate_argnums=1), lambda s: [
    (jnp.zeros((ROWS, KV_HEADS, HEAD_DIM, s)), jnp.zeros((ROWS, KV_HEADS, s, HEAD_DIM)))
    for _ in range(LAYERS)
  ]


def scanned(stacked):
  def run(x, caches):
    def step(pos, carry):
      def one(carry, per_layer):
        x, k_all, v_all = carry
        w, i = per_layer
        q, k, v = project(w, x)
        k_all = jax.lax.dynamic_update_slice(k_all, k[None], (i, 0, 0, 0, pos))
        v_all = jax.lax.dynamic_update_slice(v_all, v[None], (i, 0, 0, pos, 0))
        k_cache = jax.lax.dynamic_index_in_dim(k_all, i, keepdims=False)
        v_cache = jax.lax.dynamic_index_in_dim(v_all, i, keepdims=False)
        return (attend_and_mlp(w, x, q, k_cache, v_cache), k_all, v_all), None

      return jax.lax.scan(one, carry, (stacked, jnp.arange(LAYERS)))[0]

    return jax.lax.fori_loop(0, STEPS, step, (x, *caches))

  return jax.jit(run, donate_argnums=1), lambda s: (
    jnp.zeros((LAYERS, ROWS, KV_HEADS, HEAD_DIM, s)),
    jnp.zeros((LAYERS, ROWS, KV_HEADS, s, HEAD_DIM)),
  )


def measure(make, stacked, slots: int) -> dict:
  fn, caches = make(stacked)
  x = jnp.ones((ROWS, HIDDEN))
  began = time.perf_counter()
  compiled = fn.lower(x, caches(slots)).compile()
  compile_s = time.perf_counter() - began
  times = []
  for _ in range(3):
    fresh = jax.block_until_ready(caches(slots))
    began = time.perf_counter()
    jax.block_until_ready(compiled(x, fresh))
    times.append(time.perf_counter() - began)
  return {"compile_s": compile_s, "ms_per_token": float(np.median(times)) / STEPS * 1e3}


def main(out: str) -> None:
  jax.config.update("jax_default_matmul_precision", "highest")
  stacked = weights(jax.random.key(0))
  report = {"layers": LAYERS, "rows": ROWS, "steps": STEPS, "cases": []}
  for slots in (STEPS + 2, 640):
    case = {"cache_slots": slots, "unrolled": [], "scanned": []}
    for _ in range(2):
      for name, make in (("unrolled", unrolled), ("scanned", scanned)):
        case[name].append(measure(make, stacked, slots))
    case["scanned_over_unrolled"] = float(
      np.median([r["ms_per_token"] for r in case["scanned"]])
      / np.median([r["ms_per_token"] for r in case["unrolled"]])
    )
    print(case, flush=True)
    report["cases"].append(case)
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  runs.write_json(out, report)


if __name__ == "__main__":
  main(*sys.argv[1:])
