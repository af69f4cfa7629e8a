"""One AOT plan: compile the three parts of a CDRL step that `train.cdrl` runs, for a topology,
from abstract state, with the same functions and layouts, and report per-chip memory, FLOPs,
collectives and whether it fits.

Steps: `generate` (the sampler's prefill and decode loop: G samples of each prompt, from the
weights cast once to the compute dtype), `score` (the scorer's teacher-forced pass of every
sample under the perturbed images; the reference pass has the same shape) and `train` (the
Learner's step). Per chip, for each step, the report gives argument / output / alias / temp /
code bytes from `memory_analysis()`, FLOPs and bytes accessed from `cost_analysis()` (which
counts a loop body once: for steps with scanned layers or micro-batches, `counted_loops`, they
are no step total and the compute floor comes from `model_flops`), the count and result bytes
of every collective in the compiled HLO (those inside the decode loop run once per token;
`step_bytes` count scanned loops by their trip counts), and whether it fits the chip's HBM together with what stays resident outside the
step (master weights, optimizer state, the frozen reference). `model_flops` is the analytic
work of the whole step (for generate: one decode step), `replication` = flops_per_chip x
chips / model_flops (1 = no chip repeats another's work), and generate's
`predicted_tokens_per_s_per_chip` the roofline of one decode step from the chip table: rows
per chip / max(FLOPs / peak, bytes / bandwidth). A config whose state alone exceeds HBM is
reported as not fitting without compiling; a compile that runs out of memory is reported with
the compiler's numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from catts_jax import roofline, sharding, vision_program
from catts_jax.aot.devices import build_mesh, topology_devices
from catts_jax.aot.hardware import GiB, chip_for
from catts_jax.aot.hlo import compile_oom, dumped_programs, hlo_collectives, known_trip_counts
from catts_jax.aot.shapes import Shapes, analytic_train_flops, train_batch, trainer_shapes
from catts_jax.aot.state import abstract_train_state, per_chip_bytes
from catts_jax.models.qwen2_5_vl import presets
from catts_jax.models.qwen2_5_vl.text import init_cache
from catts_jax.rl.grpo import LossConfig
from catts_jax.rl.learner import OptimizerConfig, jit_train_step, make_train_step
from catts_jax.sampling import Sampler, SamplingConfig, carry_shardings
from catts_jax.scoring import Scorer

STEPS = ("generate", "score", "train")


def analyze(compiled, hbm_gib: float, resident_bytes: int, dumped: Sequence = ()) -> dict:
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
  text = None
  try:
    text = compiled.as_text()
  except Exception as e:  # noqa: BLE001 - XLA cannot always print the HLO it compiled
    if len(dumped) == 1:  # the compiler's own dump of this program (`hlo.dump_compiled_hlo`)
      text = next(iter(dumped)).read_text()
    else:
      out["collectives"] = None
      out["collectives_error"] = f"XLA could not print the compiled HLO: {str(e).splitlines()[0][:300]}"
  if text is not None:
    out["collectives"] = hlo_collectives(text)
    # XLA's cost analysis counts a loop body once, however often it runs.
    out["counted_loops"] = known_trip_counts(text)
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
  steps: Sequence[str] = STEPS,
  prompt_len: int = 512,
  image_patches: int = 256,
  cpu: bool = False,
  progress: Callable[[str], None] = lambda _: None,
  replicated_rollout: bool = False,
  rollout_only_if_trains: bool = False,
) -> dict:
  """Compile the `steps` of CDRL config `cfg` for `topology` on a mesh of `mesh_shape`; return
  the report (see the module docstring). `replicated_rollout`: also compile generate with
  every row on every chip (`generate_replicated`), the layout before rows were sharded."""
  began = time.perf_counter()
  chip, chips = chip_for(topology)
  devices, backend = topology_devices(topology, cpu)
  tpu = backend.startswith("tpu")
  mesh = build_mesh(mesh_shape, devices, tpu)
  # The rollout's passes run on `cfg.rollout_mesh` when set (as `rl.trainer` does).
  rollout_mesh = (
    sharding.rearrange_mesh(mesh, sharding.parse_mesh(cfg.rollout_mesh)) if cfg.get("rollout_mesh") else mesh
  )
  model_cfg = presets.resolve(cfg.model)
  g = cfg.rollout.group_size

  def shapes_for(prompts: int) -> Shapes:
    return trainer_shapes(
      model_cfg,
      prompts,
      g,
      cfg.rollout.max_new_tokens,
      prompt_len,
      image_patches,
      cfg.model.get("buckets_per_octave", 1),
    )

  # The rollout's passes take `sample_micro_batch` / `score_micro_batch` rows a call (as
  # `rl.rollout` does); the train step the whole batch.
  prompts = cfg.train.prompts_per_step
  shapes = shapes_for(prompts)
  sample_shapes = shapes_for(min(prompts, cfg.rollout.get("sample_micro_batch", 0) // g or prompts))
  score_shapes = shapes_for(min(prompts, cfg.rollout.get("score_micro_batch", 0) // g or prompts))
  state = abstract_train_state(model_cfg, OptimizerConfig(**cfg.optimizer.to_dict()), mesh)
  params_chip, opt_chip = per_chip_bytes(state.params), per_chip_bytes(state.opt_state)
  # The rollout's passes read a copy of the weights in the compute dtype on the rollout's
  # mesh; the frozen reference is kept in that dtype in the trainer's layout (`rl.trainer`).
  rollout_state = _compute_copy(state, model_cfg.compute_dtype, rollout_mesh)
  ref_chip = per_chip_bytes(_compute_copy(state, model_cfg.compute_dtype, mesh)) if cfg.loss.kl_coef else 0
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
    "rollout_mesh": dict(rollout_mesh.shape),
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
    step_fn = make_train_step(
      state.graphdef,
      state.rest,
      state.optimizer,
      LossConfig(**cfg.loss.to_dict()),
      micro_batch=cfg.train.get("micro_batch", 0),
      freeze_vision=cfg.optimizer.get("freeze_vision", False),
    )
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
    if rollout_only_if_trains and not result.get("fits"):
      for step in ("generate", "score"):
        if step in steps:
          report["steps"][step] = {
            "fits": False,
            "compiled": False,
            "skipped": True,
            "reason": "not compiled: the train step does not fit",
          }
      steps = [s for s in steps if s not in ("generate", "score")]
  # Outside the rollout's passes the fp32 master weights, the optimizer state and the
  # reference stay in HBM; the rollout's bf16 copy is the passes' argument.
  resident = params_chip + opt_chip + ref_chip
  if rollout_mesh is not mesh and ("generate" in steps or "score" in steps):
    # Once a step: the masters cast and moved to the rollout's layout.
    progress(f"compiling the reshard to the rollout mesh {dict(rollout_mesh.shape)} ...")
    out_shardings = jax.tree.map(lambda x: x.sharding, rollout_state)
    cast = jax.jit(
      lambda p: jax.tree.map(lambda x, r: x.astype(r.dtype), p, rollout_state), out_shardings=out_shardings
    )
    report["steps"]["reshard"] = _compile(lambda: cast.lower(state.params), hbm, opt_chip + ref_chip)
  if "generate" in steps:
    layouts = {"generate": rollout_mesh} | ({"generate_replicated": None} if replicated_rollout else {})
    for name, layout in layouts.items():
      progress(f"compiling {name} for {topology} {dict(rollout_mesh.shape)} ...")
      report["steps"][name] = _generate(
        state, rollout_state, model_cfg, sample_shapes, cfg, rollout_mesh, layout, hbm, resident
      )
      report["steps"][name]["shapes"] = dataclasses.asdict(sample_shapes)
  if "score" in steps:
    scorer = Scorer(state.model, mesh=rollout_mesh)
    batch = train_batch(model_cfg, score_shapes, rollout_mesh)
    progress(f"compiling score for {topology} {dict(rollout_mesh.shape)} ...")
    vision, inputs = _vision(
      state, rollout_state, model_cfg, batch.model_inputs(), rollout_mesh, hbm, resident
    )
    result = _compile(
      lambda: scorer.lower(rollout_state, inputs, batch.response_mask, score_shapes.response_len),
      hbm,
      resident,
    )
    _add_vision(result, vision)
    result["model_flops"] = analytic_score_flops(model_cfg, score_shapes)
    result["shapes"] = dataclasses.asdict(score_shapes)
    report["steps"]["score"] = result
  return _finish(report, began)


def _compute_copy(state, dtype, mesh):
  """The rollout's weights: floating params in the compute dtype, laid out on `mesh` by their
  logical axes (as `sampling.cast_state` lays them out)."""
  dtype = jnp.dtype(dtype)
  params = nnx.split(state.model, nnx.Param, ...)[1]
  shardings = jax.tree.leaves(sharding.state_shardings(params, mesh))
  leaves, treedef = jax.tree.flatten(state.params)

  def cast(x, s):
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    return jax.ShapeDtypeStruct(x.shape, dtype if floating else x.dtype, sharding=s)

  return treedef.unflatten([cast(x, s) for x, s in zip(leaves, shardings)])


def _generate(state, rollout_state, model_cfg, shapes: Shapes, cfg, mesh, layout, hbm, resident) -> dict:
  """Compile the sampler's prefill and decode loop with rows laid out on `layout` (the mesh,
  or None: every row on every chip); the decode loop's numbers are the step's, the prefill's
  sit under "prefill"."""
  sampler = Sampler(state.model, pad_id=0, mesh=layout)
  scfg = SamplingConfig(
    max_new_tokens=shapes.max_new_tokens,
    n=shapes.group,
    temperature=cfg.rollout.temperature,
    top_p=cfg.rollout.top_p,
    stop_ids=(model_cfg.eos_token_id,) if isinstance(model_cfg.eos_token_id, int) else (),
  )
  inputs = prompt_inputs(model_cfg, shapes, mesh if layout is not None else None, replicated=layout is None)
  vision, inputs = _vision(state, rollout_state, model_cfg, inputs, layout, hbm, resident)
  cache_len = shapes.prompt_len + shapes.max_new_tokens
  prefill = _compile(lambda: sampler.lower_prefill(rollout_state, inputs, cache_len), hbm, resident)
  _add_vision(prefill, vision)
  carry = decode_carry(sampler, model_cfg, shapes, scfg, mesh, replicated=layout is None)
  result = _compile(lambda: sampler.lower_decode(rollout_state, carry, scfg), hbm, resident)
  result["prefill"] = prefill
  if prefill.get("compiled") and not prefill.get("fits", False):
    result["fits"] = False
  rows, context = shapes.prompts * shapes.group, shapes.prompt_len + shapes.max_new_tokens / 2
  result["model_flops"] = roofline.text_flops(model_cfg, rows, context)  # one decode step
  result["rows"] = rows
  return result


def _vision(state, rollout_state, model_cfg, inputs: dict, layout, hbm, resident) -> tuple[dict | None, dict]:
  """Compile the vision program for `inputs`' image slots, as the scorer and the sampler run it
  (`vision_program`): its result (None without images) and the inputs the next program takes."""
  if "pixel_values" not in inputs:
    return None, inputs
  graphdef, after = nnx.graphdef(state.model), {}

  def lower():
    lowered, after["inputs"] = vision_program.lower(model_cfg, graphdef, rollout_state, inputs, layout)
    return lowered

  return _compile(lower, hbm, resident), after["inputs"]


def _add_vision(result: dict, vision: dict | None) -> None:
  """The vision program's compile under its consumer's entry ("vision"); it must fit too."""
  if vision is None:
    return
  result["vision"] = vision
  if vision.get("compiled") and not vision.get("fits", False):
    result["fits"] = False


def prompt_inputs(model_cfg, shapes: Shapes, mesh, replicated: bool = False) -> dict:
  """The prefill's inputs (one row per prompt, one image each) as ShapeDtypeStructs, laid out
  as the sampler lays them out (`sharding.input_shardings`), or all replicated."""
  b, t, p = shapes.prompt_rows, shapes.prompt_len, shapes.image_patches
  specs = dict(
    input_ids=((b, t), jnp.int32),
    positions=((3, b, t), jnp.int32),
    attention_mask=((b, t), jnp.int32),
  )
  if p:
    slots = shapes.prompt_rows
    specs.update(
      pixel_values=((slots, p, model_cfg.vision.patch_dim), jnp.float32),
      patch_pos=((slots, p, 2), jnp.int32),
      patch_image=((slots, p), jnp.int32),
      image_index=((b, t), jnp.int32),
    )
  inputs = {k: jax.ShapeDtypeStruct(*v) for k, v in specs.items()}
  if mesh is None:
    return inputs
  shardings = sharding.input_shardings(inputs, mesh)
  if replicated:
    shardings = {k: NamedSharding(mesh, jax.sharding.PartitionSpec()) for k in inputs}
  return {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings[k]) for k, x in inputs.items()}


def analytic_score_flops(model_cfg, shapes: Shapes) -> float:
  """Model FLOPs of one scoring pass over the train batch's rows: a forward (the train step's
  is 3 of these)."""
  return analytic_train_flops(model_cfg, shapes) / 3


def decode_carry(sampler, model_cfg, shapes: Shapes, scfg, mesh, replicated: bool = False) -> dict:
  """The decode loop's initial carry as ShapeDtypeStructs laid out as the sampler lays it out
  (`sampling.carry_shardings`), or all replicated."""
  b = shapes.prompt_rows
  cache_len = shapes.prompt_len + shapes.max_new_tokens

  def build(key):
    cache = init_cache(model_cfg.text, b, cache_len, model_cfg.compute_dtype)
    logits = jnp.zeros((b, model_cfg.text.vocab_size), jnp.float32)
    next_pos = jnp.zeros((b,), jnp.int32)
    return sampler.decode_carry(cache, logits, next_pos, shapes.prompts, scfg, key)

  carry = jax.eval_shape(build, jax.random.key(0))
  shardings = carry_shardings(carry, mesh)
  if replicated:
    shardings = jax.tree.map(lambda _: NamedSharding(mesh, jax.sharding.PartitionSpec()), carry)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), carry, shardings)


def _compile(lower, hbm_gib: float, resident: int) -> dict:
  began = time.perf_counter()
  before = dumped_programs()
  try:
    compiled = lower().compile()
  except Exception as e:  # noqa: BLE001 - out of memory is an answer, anything else is re-raised
    oom = compile_oom(e)
    if oom is None:
      raise
    return {"compiled": False, "fits": False, "compile_s": time.perf_counter() - began, "oom": oom}
  result = {"compiled": True, "compile_s": time.perf_counter() - began}
  result.update(analyze(compiled, hbm_gib, resident, tuple(dumped_programs() - before)))
  return result


def _finish(report: dict, began: float) -> dict:
  report["fits"] = all(s.get("fits", False) for s in report["steps"].values())
  report["seconds"] = time.perf_counter() - began
  chip, chips = report["chip"], report["chips"]
  for name, s in report["steps"].items():
    if not s.get("compiled"):
      continue
    s["compute_floor_s"] = s["flops"] / (chip["bf16_tflops"] * 1e12)
    s["memory_floor_s"] = s["bytes_accessed"] / (chip["hbm_tbs"] * 1e12)
    s["flops_per_chip"] = s["flops"]
    s["peak_gib_per_chip"] = s.get("peak_gib")
    model_flops = s.get("model_flops") or s.get("analytic_flops_per_chip", 0) * chips
    if model_flops:
      s["model_flops"] = model_flops
      s["replication"] = s["flops"] * chips / model_flops
    if s.get("counted_loops") and not name.startswith("generate"):
      # Scanned layers / micro-batches: XLA's FLOPs and bytes count each loop body once, so
      # they are no step total; the compute floor is the model's work spread over the chips.
      # (A decode step runs its layers unscanned; its fixed loops are light, e.g. the RNG's.)
      s["compute_floor_s"] = model_flops / chips / (chip["bf16_tflops"] * 1e12) if model_flops else None
      s["memory_floor_s"] = s["flops_per_chip"] = s["replication"] = None
    if name.startswith("generate") and s.get("collectives") is not None:
      s["collectives_per_decode_step"] = sum(c["loop_count"] for c in s["collectives"].values())
    if name.startswith("generate"):
      # The decode loop's body is one token for every row; its cost analysis counts it once.
      step_s = max(s["compute_floor_s"], s["memory_floor_s"])
      s["predicted_tokens_per_s_per_chip"] = s["rows"] / chips / step_s if step_s else None
  return report


def verdict(step: dict) -> str:
  if step.get("fits"):
    return "fits"
  if step.get("skipped"):
    return "not planned (train OOM)"
  if step.get("compiled") and step.get("peak_gib", 0) <= step.get("hbm_gib", 0):
    return "OOM (with resident)"  # the step alone fits, not beside the resident state
  if step.get("unshardable"):
    return "batch does not divide"
  if "reason" in step:
    return "OOM (state)"
  if "oom" in step:
    return "OOM (compile)"
  return "OOM"


def tflop_per_chip(step: dict, chips: int) -> float | None:
  """XLA's FLOPs per chip, or the model's share of them where XLA counts loop bodies once
  (None when neither is known)."""
  if step.get("flops_per_chip") is not None:
    return step["flops_per_chip"] / 1e12
  return step["model_flops"] / chips / 1e12 if step.get("model_flops") else None


def fmt(x, spec=".1f", missing="-") -> str:
  """A table cell: `x` formatted, or `missing` when it is unknown (None)."""
  return missing if x is None else format(x, spec)


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
        f"{verdict(r):>13s} {fmt(tflop_per_chip(r, report['chips'])):>7s} {r['compile_s']:9.1f}"
      )
    else:
      why = r.get("reason") or r.get("oom", {}).get("message", "")
      lines.append(f"{name:7s} {verdict(r):>13s}: {why}")
  for name, r in report["steps"].items():
    if r.get("collectives"):
      per_step = bool(r.get("counted_loops"))  # scanned: what one step moves
      parts = [
        f"{op} {c['step_count'] if per_step else c['count']}x "
        f"{(c['step_bytes'] if per_step else c['bytes']) / GiB:.2f} GiB"
        + (f" ({c['loop_count']} per token)" if c["loop_count"] and not per_step else "")
        for op, c in sorted(r["collectives"].items())
      ]
      lines.append(f"{name} collectives: " + ", ".join(parts))
    elif r.get("collectives_error"):
      lines.append(f"{name} collectives: n/a ({r['collectives_error']})")
  lines.append(f"fits: {'yes' if report['fits'] else 'NO'} ({report['seconds']:.0f} s)")
  return "\n".join(lines)
