"""One AOT plan: compile the real CDRL train step and the sampler's decode loop for a topology
from abstract state, and report per-chip memory, FLOPs, collectives and whether it fits.

Per chip, for each step, the report gives argument / output / alias / temp / code bytes from
`memory_analysis()`, FLOPs and bytes accessed from `cost_analysis()`, the count and result
bytes of every collective in the compiled HLO (those inside the decode loop run once per
token), and whether it fits the chip's HBM together with what stays resident outside the
step (the frozen reference weights; while decoding, also the optimizer state). A config whose
state alone exceeds HBM is reported as not fitting without compiling; a compile that runs out
of memory is reported with the compiler's numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from catts_jax import sharding
from catts_jax.aot.devices import build_mesh, topology_devices
from catts_jax.aot.hardware import GiB, chip_for
from catts_jax.aot.hlo import compile_oom, hlo_collectives
from catts_jax.aot.shapes import Shapes, analytic_train_flops, train_batch, trainer_shapes
from catts_jax.aot.state import abstract_train_state, per_chip_bytes
from catts_jax.models.qwen2_5_vl import presets
from catts_jax.models.qwen2_5_vl.text import init_cache
from catts_jax.rl.grpo import LossConfig
from catts_jax.rl.learner import OptimizerConfig, jit_train_step, make_train_step
from catts_jax.sampling import Sampler, SamplingConfig


def analyze(compiled, hbm_gib: float, resident_bytes: int) -> dict:
  """Per-chip memory, cost and collectives of one compiled step; fits when its peak plus what
  stays resident outside it (`resident_bytes`) is within `hbm_gib`."""
  m = compiled.memory_analysis()
  memory = {}
  if m is not None:
    for name in ("argument", "output", "alias", "temp"):
      memory[name] = int(getattr(m, f"{name}_size_in_bytes"))
    memory["code"] = int(m.generated_code_size_in_bytes)
    memory["peak"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"] + memory["code"]
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
  out = {
    "memory_bytes": memory,
    "flops": float(cost.get("flops", 0.0)),
    "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
    "transcendentals": float(cost.get("transcendentals", 0.0)),
    "resident_outside_bytes": int(resident_bytes),
  }
  try:
    out["collectives"] = hlo_collectives(compiled.as_text())
  except Exception as e:  # noqa: BLE001 - XLA cannot always print the HLO it compiled
    out["collectives"] = None
    out["collectives_error"] = f"XLA could not print the compiled HLO: {str(e).splitlines()[0][:300]}"
  if memory:
    total = memory["peak"] + resident_bytes
    out.update(
      peak_gib=memory["peak"] / GiB, total_gib=total / GiB, hbm_gib=hbm_gib, fits=total <= hbm_gib * GiB
    )
  return out


def plan(
  cfg,
  topology: str,
  mesh_shape: Mapping[str, int],
  steps: Sequence[str] = ("train", "decode"),
  prompt_len: int = 512,
  image_patches: int = 256,
  cpu: bool = False,
  progress: Callable[[str], None] = lambda _: None,
) -> dict:
  """Compile the train and/or decode step of CDRL config `cfg` for `topology` on a mesh of
  `mesh_shape`; return the report (see the module docstring)."""
  began = time.perf_counter()
  chip, chips = chip_for(topology)
  devices, backend = topology_devices(topology, cpu)
  tpu = backend.startswith("tpu")
  mesh = build_mesh(mesh_shape, devices, tpu)
  model_cfg = presets.resolve(cfg.model)
  shapes = trainer_shapes(
    model_cfg,
    cfg.train.prompts_per_step,
    cfg.rollout.group_size,
    cfg.rollout.max_new_tokens,
    prompt_len,
    image_patches,
    cfg.model.get("buckets_per_octave", 1),
  )
  state = abstract_train_state(model_cfg, OptimizerConfig(**cfg.optimizer.to_dict()), mesh)
  params_chip, opt_chip = per_chip_bytes(state.params), per_chip_bytes(state.opt_state)
  ref_chip = params_chip if cfg.loss.kl_coef else 0  # the frozen reference: same layout
  report = {
    "model": {
      "preset": cfg.model.get("preset"),
      "params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))),
      "dtype": model_cfg.dtype,
      "param_dtype": model_cfg.param_dtype,
      "remat": model_cfg.remat,
    },
    "topology": topology,
    "chip": dataclasses.asdict(chip),
    "chips": chips,
    "backend": backend,
    "mesh": dict(mesh.shape),
    "shapes": dataclasses.asdict(shapes),
    "per_chip_state_gib": {
      "params": params_chip / GiB,
      "optimizer": opt_chip / GiB,
      "reference": ref_chip / GiB,
      "total": (params_chip + opt_chip + ref_chip) / GiB,
    },
    "steps": {},
  }
  hbm = chip.hbm_gib
  state_chip = params_chip + opt_chip + ref_chip
  if state_chip > hbm * GiB:
    reason = (
      f"does not fit: params + optimizer state + reference weights alone need {state_chip / GiB:.1f} GiB "
      f"per chip > {hbm} GiB HBM (not compiled)"
    )
    for step in steps:
      report["steps"][step] = {"fits": False, "compiled": False, "reason": reason}
    return _finish(report, began)

  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if "train" in steps and shapes.rows % batch_devices:
    report["steps"]["train"] = {
      "fits": False,
      "compiled": False,
      "unshardable": True,
      "reason": f"the train batch's {shapes.rows} rows do not divide over data x fsdp = {batch_devices} "
      "devices (the Learner shards rows there): raise prompts_per_step or use a mesh with fewer data x fsdp",
    }
    steps = [s for s in steps if s != "train"]
  if "train" in steps:
    batch = train_batch(model_cfg, shapes, mesh, solution_rows=cfg.loss.sft_coef > 0)
    step_fn = make_train_step(state.graphdef, state.rest, state.optimizer, LossConfig(**cfg.loss.to_dict()))
    jitted = jit_train_step(
      step_fn,
      shapes.response_len,
      mesh,
      state.param_shardings,
      state.opt_shardings,
      jax.tree.map(lambda x: x.sharding, batch),
    )
    progress(f"compiling the train step for {topology} {dict(mesh.shape)} ...")
    result = _compile(lambda: jitted.lower(state.params, state.opt_state, batch), hbm, ref_chip)
    result["analytic_flops_per_chip"] = analytic_train_flops(model_cfg, shapes) / chips
    report["steps"]["train"] = result
  if "decode" in steps:
    sampler = Sampler(state.model, pad_id=0)
    scfg = SamplingConfig(
      max_new_tokens=shapes.max_new_tokens,
      n=shapes.group,
      temperature=cfg.rollout.temperature,
      top_p=cfg.rollout.top_p,
      stop_ids=(model_cfg.eos_token_id,) if isinstance(model_cfg.eos_token_id, int) else (),
    )
    carry = decode_carry(sampler, model_cfg, shapes, scfg, mesh)
    progress(f"compiling the decode loop for {topology} {dict(mesh.shape)} ...")
    # While decoding, the optimizer state and the reference weights stay in HBM too, and so
    # does the vision tower, which the text-only loop does not take (jit drops unused args).
    vision_chip = per_chip_bytes(state.params["visual"])
    resident = ref_chip + opt_chip + vision_chip
    result = _compile(lambda: sampler.lower_decode(state.params, carry, scfg), hbm, resident)
    report["steps"]["decode"] = result
  return _finish(report, began)


def decode_carry(sampler, model_cfg, shapes: Shapes, scfg, mesh) -> dict:
  """The decode loop's initial carry as sharded ShapeDtypeStructs: rows over data x fsdp and
  KV heads over tensor where they divide (the rules' "batch" and "kv_heads")."""
  b = shapes.prompt_rows
  cache_len = shapes.prompt_len + shapes.max_new_tokens

  def build(key):
    cache = init_cache(model_cfg.text, b, cache_len, model_cfg.compute_dtype)
    logits = jnp.zeros((b, model_cfg.text.vocab_size), jnp.float32)
    next_pos = jnp.zeros((b,), jnp.int32)
    return sampler.decode_carry(cache, logits, next_pos, shapes.prompts, scfg, key)

  carry = jax.eval_shape(build, jax.random.key(0))

  def one(path, x):
    names = [getattr(p, "key", None) for p in path]
    if x.ndim == 0 or "key" in names:
      axes = (None,) * x.ndim
    elif names[-1] in ("k", "v"):
      axes = ("batch", "kv_heads", None, None)
    else:
      axes = ("batch",) + (None,) * (x.ndim - 1)
    spec = sharding.logical_to_spec(axes, x.shape, mesh)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

  return jax.tree_util.tree_map_with_path(one, carry)


def _compile(lower, hbm_gib: float, resident: int) -> dict:
  began = time.perf_counter()
  try:
    compiled = lower().compile()
  except Exception as e:  # noqa: BLE001 - out of memory is an answer, anything else is re-raised
    oom = compile_oom(e)
    if oom is None:
      raise
    return {"compiled": False, "fits": False, "compile_s": time.perf_counter() - began, "oom": oom}
  result = {"compiled": True, "compile_s": time.perf_counter() - began}
  result.update(analyze(compiled, hbm_gib, resident))
  return result


def _finish(report: dict, began: float) -> dict:
  report["fits"] = all(s.get("fits", False) for s in report["steps"].values())
  report["seconds"] = time.perf_counter() - began
  chip = report["chip"]
  for s in report["steps"].values():
    if s.get("compiled"):
      s["compute_floor_s"] = s["flops"] / (chip["bf16_tflops"] * 1e12)
      s["memory_floor_s"] = s["bytes_accessed"] / (chip["hbm_tbs"] * 1e12)
  return report


def verdict(step: dict) -> str:
  if step.get("fits"):
    return "fits"
  if step.get("compiled") and step.get("peak_gib", 0) <= step.get("hbm_gib", 0):
    return "OOM (with resident)"  # the step alone fits, not beside the resident state
  if step.get("unshardable"):
    return "batch does not divide"
  if "reason" in step:
    return "OOM (state)"
  if "oom" in step:
    return "OOM (compile)"
  return "OOM"


def format_report(report: dict) -> str:
  """The human table of a plan report: the setup, per-step memory and verdicts, collectives."""
  lines = []
  s, st = report["shapes"], report["per_chip_state_gib"]
  lines.append(
    f"{report['model']['preset']} ({report['model']['params'] / 1e9:.3g}B params, remat={report['model']['remat']}) "
    f"on {report['topology']}: {report['chips']} x {report['chip']['name']} ({report['chip']['hbm_gib']} GiB usable HBM), "
    f"mesh {report['mesh']}"
  )
  lines.append(f"backend: {report['backend']}")
  lines.append(
    f"train batch {s['rows']} rows x {s['seq_len']} tokens (response {s['response_len']}, {s['patches']} patches); "
    f"decode {s['prompt_rows']} prompts x {s['group']} samples, cache {s['prompt_len'] + s['max_new_tokens']}"
  )
  lines.append(
    f"per chip state: params {st['params']:.2f} GiB, optimizer {st['optimizer']:.2f} GiB, reference {st['reference']:.2f} GiB"
  )
  head = f"{'step':7s} {'arg':>7s} {'out':>7s} {'alias':>7s} {'temp':>7s} {'code':>6s} {'peak':>7s} {'+resid':>7s} {'total':>7s} {'HBM':>6s} {'verdict':>13s} {'TFLOP':>7s} {'compile s':>9s}"
  lines.append(head)
  for name, r in report["steps"].items():
    m = {k: v / GiB for k, v in r.get("memory_bytes", {}).items()}
    if m:
      lines.append(
        f"{name:7s} {m['argument']:7.2f} {m['output']:7.2f} {m['alias']:7.2f} {m['temp']:7.2f} {m['code']:6.2f} "
        f"{m['peak']:7.2f} {r['resident_outside_bytes'] / GiB:7.2f} {r['total_gib']:7.2f} {r['hbm_gib']:6.2f} "
        f"{verdict(r):>13s} {r['flops'] / 1e12:7.1f} {r['compile_s']:9.1f}"
      )
    else:
      why = r.get("reason") or r.get("oom", {}).get("message", "")
      lines.append(f"{name:7s} {verdict(r):>13s}: {why}")
  for name, r in report["steps"].items():
    if r.get("collectives"):
      parts = [
        f"{op} {c['count']}x {c['bytes'] / GiB:.2f} GiB"
        + (f" ({c['loop_count']} per token)" if c["loop_count"] else "")
        for op, c in sorted(r["collectives"].items())
      ]
      lines.append(f"{name} collectives: " + ", ".join(parts))
    elif r.get("collectives_error"):
      lines.append(f"{name} collectives: n/a ({r['collectives_error']})")
  lines.append(f"fits: {'yes' if report['fits'] else 'NO'} ({report['seconds']:.0f} s)")
  return "\n".join(lines)
