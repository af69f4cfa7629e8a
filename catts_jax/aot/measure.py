"""The real CDRL train step and rollout sampler measured on one device with random weights:
time, tokens/s and MFU.

The model (random weights, the config's dtype / master-weight dtype / remat), the real
`Learner` (AdamW with the config's clipping and schedule, the GRPO loss with its KL term) and a
synthetic rollout batch: rows of prompt tokens holding one square image, then response tokens.
The first step (compilation) is timed apart; then `steps` steps, median.

Model FLOPs per step are analytic (`shapes.analytic_train_flops`: 3 forward passes; remat's
recompute is not model work) and checked against XLA's cost analysis of the step's program,
which also counts the recompute, the masked half of causal attention, the vision tower's
masked (cross-window) attention and the optimizer: the ratio is reported. MFU = model FLOPs /
step time / peak, against the chip's nominal dense peak for the compute dtype where known
(GPUs, `hardware.PEAK_FLOPS`) and against a matmul ceiling measured on the spot.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from catts_jax import roofline
from catts_jax.aot import shapes
from catts_jax.aot.hardware import peak_flops
from catts_jax.bench import synthetic_rows
from catts_jax.models.qwen2_5_vl import Qwen2_5_VL, presets
from catts_jax.rl.batch import TrainBatch
from catts_jax.rl.grpo import LossConfig
from catts_jax.rl.learner import Learner, OptimizerConfig, jit_train_step, make_train_step
from catts_jax.sampling import Sampler, SamplingConfig, cast_state


def synthetic_batch(
  model_cfg, rows: int, prompt_len: int, response_len: int, image_patches: int, seed: int = 0
):
  """A rollout-shaped train batch (numpy, by field name): `bench.synthetic_rows`' random
  tokens with one image per row after 8 tokens, then log-probs, response mask and advantages."""
  rng = np.random.default_rng(seed)
  if image_patches:
    side = int(round(image_patches**0.5))
    merge = model_cfg.vision.spatial_merge_size
    if side * side != image_patches or side % merge:
      raise ValueError(
        f"--image_patches {image_patches}: expected a square of a multiple of {merge}, e.g. 256"
      )
    tokens = image_patches // merge**2
    if 10 + tokens > prompt_len:
      raise ValueError(f"--prompt_len {prompt_len} cannot hold an image of {tokens} tokens")
  special = [model_cfg.image_token_id, model_cfg.video_token_id, model_cfg.vision_start_token_id]
  high = min([model_cfg.text.vocab_size, *special]) - 16
  batch = synthetic_rows(rng, model_cfg, rows, prompt_len + response_len, image_patches, high).model_inputs()
  # Near a random-init policy's own log-probs (uniform over the vocabulary), so the clipped
  # ratios and the KL term stay in their usual range.
  logp = np.full((rows, response_len), -np.log(model_cfg.text.vocab_size), np.float32)
  batch.update(
    old_logp=logp + rng.normal(0, 0.05, logp.shape).astype(np.float32),
    ref_logp=logp + rng.normal(0, 0.05, logp.shape).astype(np.float32),
    response_mask=np.ones((rows, response_len), np.float32),
    advantages=rng.normal(0, 1, rows).astype(np.float32),
  )
  return batch


def train_step(
  cfg, rows: int, prompt_len: int, response_len: int, image_patches: int, steps: int, device: str
) -> dict:
  """Time CDRL config `cfg`'s train step on `rows` synthetic rows (see the module docstring);
  `device` ("cpu" or "gpu") sizes the matmul ceiling. Returns the report."""
  model_cfg = presets.resolve(cfg.model)
  began = time.perf_counter()
  model = Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(cfg.train.seed))
  loss, opt_cfg = LossConfig(**cfg.loss.to_dict()), OptimizerConfig(**cfg.optimizer.to_dict())
  learner = Learner(model, loss, opt_cfg)
  del model
  init_s = time.perf_counter() - began
  host = synthetic_batch(model_cfg, rows, prompt_len, response_len, image_patches, cfg.train.seed)
  if cfg.loss.sft_coef > 0:  # the anchor's solution rows: the last ninth (1 per 8 samples)
    host["sft_rows"] = (np.arange(rows) >= rows - max(1, rows // 9)).astype(np.float32)
  batch = TrainBatch(**{k: jnp.asarray(v) for k, v in host.items()})
  batch_shapes = shapes.Shapes(
    prompts=rows,
    group=1,
    rows=rows,
    response_len=response_len,
    seq_len=prompt_len + response_len,
    images=rows if image_patches else 0,
    patches=rows * image_patches,
    prompt_rows=rows,
    prompt_len=prompt_len,
    max_new_tokens=response_len,
    image_patches=image_patches,
  )
  model_flops = shapes.analytic_train_flops(model_cfg, batch_shapes)
  # XLA's count for the same program with the layer scan unrolled (its cost analysis counts a
  # loop body once), lowered, not compiled.
  unrolled = nnx.eval_shape(lambda: Qwen2_5_VL(model_cfg.replace(scan_layers=False), rngs=nnx.Rngs(0)))
  graphdef = nnx.split(unrolled, nnx.Param, ...)[0]
  step = make_train_step(graphdef, learner.rest, learner.optimizer, loss, freeze_vision=opt_cfg.freeze_vision)
  lowered = jit_train_step(step, response_len, None).lower(learner.params, learner.opt_state, batch)
  cost = lowered.cost_analysis()
  cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
  xla_flops = float(cost.get("flops", 0.0))

  start = time.perf_counter()
  first = learner.step(batch, response_len)
  compile_s = time.perf_counter() - start
  times, losses = [], [first["loss"]]
  for _ in range(steps):
    start = time.perf_counter()
    metrics = learner.step(batch, response_len)
    times.append(time.perf_counter() - start)
    losses.append(metrics["loss"])
  step_s = float(np.median(times))

  dev = jax.devices()[0]
  dtype = model_cfg.dtype
  peak = peak_flops(dev.device_kind, dtype)
  ceiling = roofline.measure_matmul_flops(
    n=8192 if device == "gpu" else 1024, dtype=jnp.dtype(dtype), repeats=5
  )
  memory = dev.memory_stats() or {}
  params = jax.tree.leaves(learner.params)
  vision = jax.tree.leaves(learner.params["visual"])
  report = {
    "device": dev.device_kind,
    "platform": dev.platform,
    "jax": jax.__version__,
    "model": {
      "preset": cfg.model.get("preset"),
      "params": int(sum(x.size for x in params)),
      "vision_params": int(sum(x.size for x in vision)),
      "dtype": dtype,
      "param_dtype": model_cfg.param_dtype,
      "remat": model_cfg.remat,
    },
    "batch": {
      "rows": rows,
      "prompt_len": prompt_len,
      "response_len": response_len,
      "seq_len": prompt_len + response_len,
      "image_patches": image_patches,
      "tokens": rows * (prompt_len + response_len),
    },
    "init_s": init_s,
    "compile_s": compile_s,
    "step_s": step_s,
    "step_times_s": times,
    "tokens_per_s": rows * (prompt_len + response_len) / step_s,
    "model_flops": model_flops,
    "xla_flops": xla_flops,
    "xla_over_model_flops": xla_flops / model_flops if model_flops else None,
    "achieved_tflops": model_flops / step_s / 1e12,
    "peak_tflops": peak / 1e12 if peak else None,
    "mfu": model_flops / step_s / peak if peak else None,
    "measured_matmul_tflops": ceiling / 1e12,
    "mfu_of_measured_matmul": model_flops / step_s / ceiling,
    "peak_memory_gib": memory["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in memory else None,
    "losses": losses,
  }
  return report


def rollout(cfg, prompts: int, prompt_len: int, new_tokens: int, image_patches: int, steps: int) -> dict:
  """Time CDRL config `cfg`'s rollout sampling on one device: `prompts` synthetic prompts of
  `prompt_len` tokens (one `image_patches`-patch image each), `cfg.rollout.group_size` samples
  each, exactly `new_tokens` tokens (no stop token), from weights cast once to the compute
  dtype. The first call (compilation) is timed apart, then `steps` calls, median."""
  model_cfg = presets.resolve(cfg.model)
  group = cfg.rollout.group_size
  sampler = Sampler(Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(cfg.train.seed)))
  state = cast_state(sampler.state, model_cfg.compute_dtype)
  special = [model_cfg.image_token_id, model_cfg.video_token_id, model_cfg.vision_start_token_id]
  high = min([model_cfg.text.vocab_size, *special]) - 16
  rng = np.random.default_rng(cfg.train.seed)
  batch = synthetic_rows(rng, model_cfg, prompts, prompt_len, image_patches, high)
  scfg = SamplingConfig(max_new_tokens=new_tokens, n=group, temperature=1.0, stop_ids=())

  def run(i: int) -> float:
    start = time.perf_counter()
    out = sampler(batch, scfg, jax.random.key(i), state=state)
    assert (out.lengths == new_tokens).all()  # timed tokens are the tokens generated
    return time.perf_counter() - start

  compile_s = run(0)
  times = [run(i + 1) for i in range(steps)]
  step_s = float(np.median(times))
  rows = prompts * group
  model_flops = roofline.text_flops(model_cfg, prompts * prompt_len, (prompt_len + 1) / 2, prompts)
  model_flops += sum(roofline.text_flops(model_cfg, rows, prompt_len + i) for i in range(1, new_tokens))
  dev = jax.devices()[0]
  peak = peak_flops(dev.device_kind, model_cfg.dtype)
  return {
    "device": dev.device_kind,
    "platform": dev.platform,
    "jax": jax.__version__,
    "model": {"preset": cfg.model.get("preset"), "dtype": model_cfg.dtype},
    "batch": {
      "prompts": prompts,
      "group": group,
      "rows": rows,
      "prompt_len": prompt_len,
      "new_tokens": new_tokens,
      "image_patches": image_patches,
    },
    "compile_s": compile_s,
    "step_s": step_s,
    "step_times_s": times,
    "tokens_per_s": rows * new_tokens / step_s,
    "model_flops": model_flops,
    "achieved_tflops": model_flops / step_s / 1e12,
    "mfu": model_flops / step_s / peak if peak else None,
  }
