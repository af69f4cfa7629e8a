"""The growing KV cache (`SamplingConfig.grow_cache`) against the whole cache from the start, in
one process, alternating: the bench model (catts_jax.bench) sampling 32-token prompts at
temperature 1 with EOS off, at each (batch, new tokens) case; medians of the timed rounds
after a first call of each (compiles). Also checks that both give the same tokens.

  python docs/experiments/grow_cache.py docs/reports/grow_cache/report.json 32x512 8x2048
"""

import json
import pathlib
import sys
import time

import jax
import numpy as np

from catts_jax import bench, roofline, runs
from catts_jax.models.qwen2_5_vl import ModelConfig, load_hf
from catts_jax.sampling import Sampler, SamplingConfig

ROUNDS = 2


def main(out: str, *cases: str) -> None:
  jax.config.update("jax_default_matmul_precision", "highest")
  workdir = bench.random_checkpoint("grow_cache_")
  cfg = ModelConfig.from_pretrained(workdir).replace(dtype="float32", param_dtype="float32")
  model = load_hf(workdir, cfg)
  rng = np.random.default_rng(0)
  report = {"machine": {"read_bandwidth_gbs": roofline.measure_read_bandwidth() / 1e9}, "cases": []}
  for case in cases:
    rows, new = (int(x) for x in case.split("x"))
    batch = bench.synthetic_rows(rng, cfg, rows, 32, 0, bench.VOCAB - 64)
    modes = {"whole": Sampler(model, bench.PAD), "grown": Sampler(model, bench.PAD)}
    configs = {
      mode: SamplingConfig(max_new_tokens=new, temperature=1.0, stop_ids=(), grow_cache=mode == "grown")
      for mode in modes
    }
    times, first, tokens = {m: [] for m in modes}, {}, {}
    for mode, sampler in modes.items():
      began = time.perf_counter()
      tokens[mode] = sampler(batch, configs[mode], jax.random.key(0)).tokens
      first[mode] = time.perf_counter() - began
    for _ in range(ROUNDS):
      for mode, sampler in modes.items():
        began = time.perf_counter()
        sampler(batch, configs[mode], jax.random.key(0))
        times[mode].append(time.perf_counter() - began)
    median = {m: float(np.median(t)) for m, t in times.items()}
    report["cases"].append({
      "batch": rows,
      "new_tokens": new,
      "seconds": times,
      "first_call_s": first,
      "tokens_per_s": {m: rows * new / s for m, s in median.items()},
      "speedup": median["whole"] / median["grown"],
      "decode_programs": {m: modes[m]._decode._cache_size() for m in modes},
      "same_tokens": bool(np.array_equal(tokens["whole"], tokens["grown"])),
    })  # fmt: skip
    print(json.dumps(report["cases"][-1]), flush=True)
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  runs.write_json(out, report)


if __name__ == "__main__":
  main(*sys.argv[1:])
