"""How fast can batch-32 decode of the bench model be on this CPU? The sampler's decode step
against the same weights' matrix products alone, and transformers' `generate`, in one process,
alternating rounds (medians after a first call of each, which compiles).

`matmuls`: per step and layer the q, k, v, o, gate, up and down products, then the LM head, on
[rows, hidden] activations, chained in a `lax.fori_loop` of `new_tokens` steps: no attention,
norm, RoPE, cache write, softmax, sampling or log-probs. No decode that runs these products with
XLA's CPU kernels can be faster, so `matmuls_over_transformers` bounds the bench's speed-up over
transformers and `matmuls_roofline_fraction` its fraction of the roofline (catts_jax.bench's:
the decode's FLOPs at the best measured matmul rate).

  python docs/experiments/decode_floor.py docs/reports/decode_floor/report.json 32x512
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from catts_jax import bench, roofline, runs
from catts_jax.models.qwen2_5_vl import ModelConfig, load_hf
from catts_jax.sampling import Sampler, SamplingConfig

ROUNDS = 2
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


def matmul_chain(hf, new_tokens: int):
  """fn(x [rows, hidden]) running the model's products for `new_tokens` steps (weights as [in, out])."""
  weights = {name: jnp.asarray(w.detach().numpy().T) for name, w in hf.state_dict().items()
             if name.endswith(".weight") and w.ndim == 2 and "visual" not in name and "embed" not in name}  # fmt: skip
  layers = sorted({n.split(".layers.")[1].split(".")[0] for n in weights if ".layers." in n}, key=int)
  stack = [
    [next(w for n, w in weights.items() if f".layers.{i}.{p}." in n) for p in PROJECTIONS] for i in layers
  ]
  head = weights["lm_head.weight"]

  def step(_, x):
    for q, k, v, o, gate, up, down in stack:
      h = x @ q + jnp.pad(x @ k + x @ v, ((0, 0), (0, q.shape[1] - k.shape[1])))
      x = x + (h @ o) * 1e-3
      x = x + ((x @ gate) * (x @ up)) @ down * 1e-3
    return x + (x @ head)[:, : x.shape[1]] * 1e-6  # the head's product feeds the next step

  return jax.jit(lambda x: jax.lax.fori_loop(0, new_tokens, step, x))


def run_case(rows: int, new: int, model, hf, cfg, rng, ceiling: float, bandwidth: float) -> dict:
  """One (rows, new tokens) case: the three runners alternated; their seconds and ratios."""
  import torch

  batch = bench.synthetic_rows(rng, cfg, rows, 32, 0, bench.VOCAB - 64)
  sampler, chain = Sampler(model, bench.PAD), matmul_chain(hf, new)
  scfg = SamplingConfig(max_new_tokens=new, temperature=1.0, stop_ids=(), grow_cache=True)
  x = jnp.asarray(rng.standard_normal((rows, cfg.text.hidden_size)), jnp.float32)
  inputs = bench.hf_inputs(batch, "cpu", torch)

  def transformers_generate():
    with torch.no_grad():
      hf.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                  max_new_tokens=new, min_new_tokens=new, pad_token_id=bench.PAD)  # fmt: skip

  runners = {
    "sampler": lambda: np.asarray(sampler(batch, scfg, jax.random.key(0)).tokens),
    "matmuls": lambda: np.asarray(chain(x)),
    "transformers": transformers_generate,
  }
  timed = bench.timed(runners, ROUNDS)  # the first call of each compiles; not counted
  times, median = timed["times_s"], timed["median_s"]
  _, floor = roofline.generation_cost(cfg, rows, 32, new, 4, ceiling, bandwidth)
  return {
    "batch": rows,
    "new_tokens": new,
    "seconds": times,
    "ms_per_step": {name: 1e3 * s / new for name, s in median.items()},
    "sampler_over_transformers": median["transformers"] / median["sampler"],
    "matmuls_over_transformers": median["transformers"] / median["matmuls"],
    "sampler_over_matmuls": median["sampler"] / median["matmuls"],
    "roofline_floor_s": floor,
    "sampler_roofline_fraction": floor / median["sampler"],
    "matmuls_roofline_fraction": floor / median["matmuls"],
  }


def main(out: str, *cases: str) -> None:
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration

  jax.config.update("jax_default_matmul_precision", "highest")
  workdir = bench.random_checkpoint("decode_floor_")
  cfg = ModelConfig.from_pretrained(workdir).replace(dtype="float32", param_dtype="float32")
  model = load_hf(workdir, cfg)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(workdir, dtype=torch.float32).eval()
  ceiling = max(roofline.measure_matmul_flops(), roofline.measure_torch_matmul_flops(device="cpu"))
  bandwidth = roofline.measure_read_bandwidth()
  rng = np.random.default_rng(0)
  report = {"machine": {"matmul_gflops_fp32": ceiling / 1e9}, "cases": []}
  for case in cases:
    rows, new = (int(x) for x in case.split("x"))
    report["cases"].append(run_case(rows, new, model, hf, cfg, rng, ceiling, bandwidth))
    print(json.dumps(report["cases"][-1]["ms_per_step"]), flush=True)
  runs.write_json(pathlib.Path(out), report)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main(*sys.argv[1:])
