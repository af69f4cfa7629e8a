"""Ahead-of-time sharding plans: will a CDRL step fit a TPU topology, and what does it cost?

    python -m train.compile --config configs/cdrl_qwen2_5_vl.py:7b,v5e-16 --out DIR
    python -m train.compile --config configs/cdrl_qwen2_5_vl.py:7b,v5e-16 --topology v5p:2x2x2 \
      --strategy fsdp --out DIR          # or --mesh data=1,fsdp=8,tensor=1
    python -m train.compile --sweep --out DIR [--markdown docs/sharding.md]

No weights are created: the model is built with `nnx.eval_shape`, params and optimizer
state get their shardings from the logical-axis rules (catts_jax/sharding.py), and the real
CDRL train step (`rl.learner.make_train_step`, jitted as the Learner jits it) and the
sampler's decode loop (`Sampler.lower_decode`) are lowered from `jax.ShapeDtypeStruct`s and
compiled for the topology's devices from `jax.experimental.topologies.get_topology_desc`
(needs libtpu: `pip install -e '.[tpu]'`; no TPU needed). Without libtpu the same program is
compiled for simulated CPU devices, and the report says so (the CPU compiler's buffers and
fusions differ from the TPU's: treat those numbers as rough).

Per chip, for each step, the report gives argument / output / alias / temp / code bytes from
`memory_analysis()`, FLOPs and bytes accessed from `cost_analysis()`, the count and result
bytes of every collective in the compiled HLO (those inside the decode loop run once per
token), and whether it fits the chip's HBM together with what stays resident outside the
step (the frozen reference weights; while decoding, also the optimizer state). A config whose
state alone exceeds HBM is reported as not fitting without compiling; a compile that runs out
of memory is reported with the compiler's numbers. `DIR/report.json` holds it all; the exit
status is 0 whenever a report was written, fits or not.

Shapes follow the trainer: a train batch of prompts_per_step x group_size rows (rounded up to
a power of two, as the Processor buckets them), each `--prompt_len` prompt tokens (holding one
`--image_patches`-patch image) plus `max_new_tokens` response tokens, rounded up to a power of
two (or finer, as `model.buckets_per_octave` asks); the decode loop over the same rows with a
KV cache of prompt + max_new_tokens slots.

`--sweep` compiles a grid (models x topologies x strategies x shapes "PxGxR" = prompts x
group x response tokens), one subprocess each, streaming rows to DIR/sweep.jsonl (a rerun
resumes), and writes DIR/sweep.md and DIR/report.json; `--markdown FILE` also replaces the
block between `<!-- sweep-table:start -->` and `<!-- sweep-table:end -->` in FILE.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from absl import app, flags, logging
from ml_collections import config_flags


def define_flags() -> None:
  """Define the command-line flags: only when run as a program, so that other entry points
  can import this module's helpers."""
  global \
    _CONFIG, \
    _OUT, \
    _TOPOLOGY, \
    _MESH, \
    _STRATEGY, \
    _STEPS, \
    _PROMPT_LEN, \
    _IMAGE_PATCHES, \
    _CPU, \
    _SWEEP, \
    _SWEEP_MODELS, \
    _SWEEP_TOPOLOGIES, \
    _SWEEP_STRATEGIES, \
    _SWEEP_SHAPES, \
    _SWEEP_IMAGE_PATCHES, \
    _SWEEP_EXTRA, \
    _SWEEP_STEPS, \
    _SWEEP_TIMEOUT, \
    _MARKDOWN
  _CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
  _OUT = flags.DEFINE_string("out", None, "output directory (report.json)")
  _TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU topology, e.g. v5e:4x4, v5p:2x2x2 (default: the config's)"
  )
  _MESH = flags.DEFINE_string("mesh", None, "mesh axes, e.g. data=1,fsdp=16,tensor=1 (-1: the rest)")
  _STRATEGY = flags.DEFINE_enum("strategy", None, ["dp", "fsdp", "fsdp_tp", "tp"], "a named mesh (configs)")
  _STEPS = flags.DEFINE_list("steps", ["train", "decode"], "which steps to compile: train, decode")
  _PROMPT_LEN = flags.DEFINE_integer("prompt_len", 512, "prompt tokens per problem (image tokens included)")
  _IMAGE_PATCHES = flags.DEFINE_integer("image_patches", 256, "patches of the one image per prompt (0: text)")
  _CPU = flags.DEFINE_bool("cpu", False, "compile for simulated CPU devices even when libtpu is present")
  _SWEEP = flags.DEFINE_bool("sweep", False, "compile the sweep grid and write the Markdown table")
  _SWEEP_MODELS = flags.DEFINE_list("sweep_models", ["7b"], "sweep: model sizes")
  _SWEEP_TOPOLOGIES = flags.DEFINE_list(
    "sweep_topologies", ["v5e:4x4", "v5p:2x2x2", "v6e:4x4", "v4:2x2x1"], ""
  )
  _SWEEP_STRATEGIES = flags.DEFINE_list(
    "sweep_strategies", ["fsdp", "fsdp_tp", "tp", "dp"], "sweep: strategies"
  )
  _SWEEP_SHAPES = flags.DEFINE_list(
    "sweep_shapes", ["2x8x1024", "2x8x2048"], "sweep: PxGxR[xI] prompts x group x response [x image patches]"
  )
  _SWEEP_IMAGE_PATCHES = flags.DEFINE_integer(
    "sweep_image_patches", 256, "sweep: image patches unless a shape says"
  )
  _SWEEP_EXTRA = flags.DEFINE_list(
    "sweep_extra",
    [
      "7b/v5e:4x4/fsdp/2x8x1024x0",  # text only: the language model's share
      "7b/v5e:4x4/fsdp_tp/2x8x1024x0",
      "7b/v5e:4x4/fsdp_tp/1x8x1024",  # half the rows
      "7b/v5p:2x2x2/fsdp/2x8x1024x1024",  # a 448x448 image per prompt
      "7b/v5p:2x2x2/fsdp/16x8x2048x1024",  # the paper-like config's own batch
      "3b/v5e:4x4/fsdp/2x8x2048",
      "3b/v5e:4x4/fsdp_tp/2x8x2048",
      "3b/v6e:4x4/fsdp/2x8x2048",
      "3b/v5p:2x2x2/fsdp/2x8x2048",
      "3b/v4:2x2x1/fsdp/2x8x2048",
      "72b/v5e:4x4/fsdp/2x8x1024",
      "72b/v5p:2x2x2/fsdp/2x8x1024",
      "72b/v5p:4x4x4/fsdp_tp/2x8x1024",
    ],
    "sweep: extra cells model/topology/strategy/PxGxR[xI]",
  )
  _SWEEP_STEPS = flags.DEFINE_list("sweep_steps", ["train", "decode"], "sweep: steps compiled per cell")
  _SWEEP_TIMEOUT = flags.DEFINE_integer("sweep_timeout", 3600, "sweep: seconds per cell")
  _MARKDOWN = flags.DEFINE_string(
    "markdown", None, "sweep: a Markdown file whose sweep-table block is rewritten"
  )


CONFIG_FILE = "configs/cdrl_qwen2_5_vl.py"
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation. `hbm_gib` is what XLA may allocate (its compile-time OOM message
  quotes it), a little under the nominal size."""

  name: str
  hbm_gib: float
  nominal_hbm_gib: int
  bf16_tflops: float
  hbm_tbs: float
  megacore: bool  # one JAX device per chip for two TensorCores


CHIPS = {
  "v4": Chip("TPU v4", 30.75, 32, 275, 1.2, True),
  "v5e": Chip("TPU v5e", 15.75, 16, 197, 0.82, False),
  "v5p": Chip("TPU v5p", 95.73, 95, 459, 2.76, True),
  "v6e": Chip("TPU v6e", 31.24, 32, 918, 1.64, False),
}


def chip_for(topology: str) -> tuple[Chip, int]:
  generation, _, dims = topology.partition(":")
  if generation not in CHIPS or not re.fullmatch(r"\d+(x\d+)*", dims):
    raise ValueError(f"topology {topology!r}: expected <{'|'.join(CHIPS)}>:AxB[xC], e.g. v5e:4x4")
  return CHIPS[generation], math.prod(int(d) for d in dims.split("x"))


def parse_mesh(text: str) -> dict[str, int]:
  """'data=1,fsdp=16,tensor=1' -> {'data': 1, 'fsdp': 16, 'tensor': 1}."""
  out = {}
  for part in text.split(","):
    name, _, size = part.partition("=")
    if not size.lstrip("-").isdigit():
      raise ValueError(f"--mesh {text!r}: expected axis=size pairs such as data=1,fsdp=16,tensor=1")
    out[name.strip()] = int(size)
  return out


def mesh_sizes(shape: Mapping[str, int], n: int) -> dict[str, int]:
  """Resolve -1 (or a missing `data`) as `sharding.make_mesh` does, without devices."""
  from catts_jax import sharding

  shape = dict(shape)
  free = [a for a in sharding.MESH_AXES if shape.get(a) == -1] or ([] if "data" in shape else ["data"])
  if free:
    rest = math.prod(shape.get(a, 1) for a in sharding.MESH_AXES if a != free[0])
    shape[free[0]] = n // rest if n % rest == 0 else -1
  sizes = {a: shape.get(a, 1) for a in sharding.MESH_AXES}
  if math.prod(sizes.values()) != n:
    raise ValueError(f"mesh {dict(shape)} does not fit {n} chips")
  return sizes


# --- devices -------------------------------------------------------------------------------


def topology_devices(topology: str, cpu: bool = False):
  """(devices, backend description). TPU compile-only devices when libtpu is present,
  otherwise the first N (simulated) CPU devices."""
  import jax

  chip, n = chip_for(topology)
  reason = "--cpu given"
  if not cpu:
    if importlib.util.find_spec("libtpu") is None:
      reason = "libtpu is not installed (pip install -e '.[tpu]')"
    else:
      from jax.experimental import topologies

      # Compile-only use: let several processes (a sweep, a test run) load libtpu at once.
      os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
      try:
        desc = topologies.get_topology_desc(
          platform="tpu", topology_name=topology, chip_config_name="megacore" if chip.megacore else "default"
        )
        return list(desc.devices), f"tpu ({chip.name}, libtpu compile-only devices)"
      except Exception as e:  # noqa: BLE001 - any libtpu failure means: fall back
        reason = f"libtpu could not describe {topology}: {str(e).splitlines()[0][:200]}"
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise RuntimeError(
      f"{reason}; the CPU fallback needs {n} devices but has {len(devices)}: start with "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={n}"
    )
  return devices[:n], f"cpu-simulated ({reason}; CPU compiler figures, not TPU ones)"


def build_mesh(shape: Mapping[str, int], devices, tpu: bool):
  from jax.experimental import mesh_utils
  from jax.sharding import Mesh

  from catts_jax import sharding

  sizes = mesh_sizes(shape, len(devices))
  mesh = sharding.make_mesh(sizes, devices)
  if tpu:  # physical (ICI) order, as on a real slice
    try:
      order = mesh_utils.create_device_mesh(
        tuple(sizes.values()), devices=devices, allow_split_physical_axes=True
      )
      mesh = Mesh(order, sharding.MESH_AXES)
    except Exception:  # noqa: BLE001 - keep the plain order
      pass
  return mesh


# --- model, state, batch -------------------------------------------------------------------


def model_config(cfg):
  from catts_jax.models.qwen2_5_vl import presets

  return presets.resolve(cfg.model)


@dataclasses.dataclass
class AbstractState:
  model: object  # abstract nnx module (ShapeDtypeStruct leaves)
  graphdef: object
  rest: object
  optimizer: object
  params: object  # nnx.State of ShapeDtypeStruct with shardings
  opt_state: object
  param_shardings: object
  opt_shardings: object


def abstract_train_state(model_cfg, opt_cfg, mesh, rules=None, model=None) -> AbstractState:
  """Params and optimizer state as sharded ShapeDtypeStructs, exactly as the Learner lays them
  out, without allocating anything. `mesh` may be a `jax.sharding.AbstractMesh`."""
  import jax
  from flax import nnx

  from catts_jax import sharding
  from catts_jax.models.qwen2_5_vl import Qwen2_5_VL
  from catts_jax.rl.learner import make_optimizer, opt_state_shardings

  if model is None:
    model = nnx.eval_shape(lambda: Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # One NamedSharding per param, in the params' own tree structure (Param nodes kept).
  per_variable = jax.tree.leaves(sharding.state_shardings(params, mesh, rules))
  param_sh = jax.tree.unflatten(jax.tree.structure(params), per_variable)
  optimizer = make_optimizer(opt_cfg, params)
  opt_sh = opt_state_shardings(optimizer, params, param_sh, mesh)
  sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
  abstract_params = jax.tree.map(sds, params, param_sh)
  abstract_opt = jax.tree.map(sds, jax.eval_shape(optimizer.init, params), opt_sh)
  return AbstractState(model, graphdef, rest, optimizer, abstract_params, abstract_opt, param_sh, opt_sh)


def _path_name(path) -> str:
  parts = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        parts.append(str(getattr(p, attr)))
        break
  return "/".join(x for x in parts if x != "value")


def spec_table(state: AbstractState) -> dict[str, str]:
  """`tree/path -> "shape dtype PartitionSpec"` for every param and optimizer-state leaf.
  Decoder layers and vision blocks whose entries all agree are folded into one `*` entry
  (an entry for one index appears as soon as that layer differs from the others)."""
  import jax

  entries = {}
  for tree, values in (("params", state.params), ("opt_state", state.opt_state)):
    for path, x in jax.tree_util.tree_flatten_with_path(values)[0]:
      spec = x.sharding.spec if x.sharding is not None else None
      entries[f"{tree}/{_path_name(path)}"] = f"{tuple(x.shape)} {x.dtype} {spec}"
  folded: dict[str, dict[str, str]] = {}
  for name, value in entries.items():
    key = re.sub(r"/(layers|blocks)/\d+/", r"/\1/*/", name)
    folded.setdefault(key, {})[name] = value
  out = {}
  for key, members in folded.items():
    if key != next(iter(members)) and len(set(members.values())) == 1:
      out[key] = f"{next(iter(members.values()))} x{len(members)}"
    else:
      out.update(members)
  return out


def per_chip_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  import jax
  import numpy as np

  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def total_bytes(tree) -> int:
  import jax
  import numpy as np

  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What the trainer would compile for: real and bucketed sizes."""

  prompts: int
  group: int
  rows: int  # train rows: prompts x group, bucketed
  response_len: int  # bucketed
  seq_len: int  # prompt + response, bucketed
  images: int  # image slots: one image per train row, bucketed (0: text only)
  patches: int  # all slots' patches: images x image_patches
  prompt_rows: int  # decode: prompts, bucketed
  prompt_len: int  # decode: prompt tokens, bucketed
  max_new_tokens: int
  image_patches: int


def trainer_shapes(
  model_cfg,
  prompts: int,
  group: int,
  max_new_tokens: int,
  prompt_len: int,
  image_patches: int,
  buckets_per_octave: int = 1,
):
  from catts_jax.processing import bucket, power_of_two_buckets, text_buckets

  seq_buckets, response_buckets = text_buckets(model_cfg.text.max_position_embeddings, buckets_per_octave)
  row_buckets = power_of_two_buckets(1, 1 << 16)
  image_tokens = image_patches // model_cfg.vision.spatial_merge_size**2
  if image_tokens + 1 > prompt_len:
    raise ValueError(
      f"--prompt_len {prompt_len} cannot hold a {image_patches}-patch image ({image_tokens} tokens)"
    )
  response = bucket(max_new_tokens, response_buckets, "response length")
  images = bucket(prompts * group, row_buckets, "images") if image_patches else 0
  merge_block = model_cfg.vision.spatial_merge_size**2
  if image_patches % merge_block:
    raise ValueError(f"--image_patches {image_patches}: expected a multiple of {merge_block}")
  return Shapes(
    prompts=prompts,
    group=group,
    rows=bucket(prompts * group, row_buckets, "rows"),
    response_len=response,
    seq_len=bucket(prompt_len + response, seq_buckets, "sequence length"),
    images=images,
    patches=images * image_patches,
    prompt_rows=bucket(prompts, row_buckets, "prompt rows"),
    prompt_len=bucket(prompt_len, seq_buckets, "prompt length"),
    max_new_tokens=max_new_tokens,
    image_patches=image_patches,
  )


def train_batch(model_cfg, shapes: Shapes, mesh=None, solution_rows: bool = False) -> dict:
  """The train step's batch as ShapeDtypeStructs (sharded as the Learner shards it);
  `solution_rows`: with the row marks of the reference-solution anchor (`loss.sft_coef`)."""
  import jax
  import jax.numpy as jnp

  from catts_jax.rl.learner import batch_shardings

  b, t, r = shapes.rows, shapes.seq_len, shapes.response_len
  i, p = shapes.images, shapes.image_patches
  batch = dict(
    input_ids=((b, t), jnp.int32),
    positions=((3, b, t), jnp.int32),
    attention_mask=((b, t), jnp.int32),
    old_logp=((b, r), jnp.float32),
    ref_logp=((b, r), jnp.float32),
    response_mask=((b, r), jnp.float32),
    advantages=((b,), jnp.float32),
  )
  if solution_rows:
    batch["sft_rows"] = ((b,), jnp.float32)
  if i:
    batch.update(
      pixel_values=((i, p, model_cfg.vision.patch_dim), jnp.float32),
      patch_pos=((i, p, 2), jnp.int32),
      patch_image=((i, p), jnp.int32),
    )
  batch = {k: jax.ShapeDtypeStruct(*v) for k, v in batch.items()}
  if mesh is None:
    return batch
  sh = batch_shardings(batch, mesh)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in batch.items()}


def analytic_train_flops(model_cfg, shapes: Shapes) -> float:
  """Model FLOPs of one train step (forward + backward = 3 forwards; remat's recompute is not
  model work): the text model over every row and token (LM head on the response positions
  only), and the vision tower over every patch."""
  from catts_jax import roofline

  tokens = shapes.rows * shapes.seq_len
  fwd = roofline.text_flops(model_cfg, tokens, (shapes.seq_len + 1) / 2, shapes.rows * shapes.response_len)
  if shapes.patches:
    v = model_cfg.vision
    per_image = roofline.vision_flops(
      model_cfg, shapes.image_patches, min(shapes.image_patches, v.window_patches**2)
    )
    fwd += per_image * shapes.images
  return 3 * fwd


# --- analysis ------------------------------------------------------------------------------

COLLECTIVES = (
  "all-gather",
  "all-reduce",
  "reduce-scatter",
  "all-to-all",
  "ragged-all-to-all",
  "collective-permute",
  "collective-broadcast",
)
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][\w\-]*)\(")
_CALLEE = re.compile(r"\b(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_WHILE = re.compile(r"\bwhile\(.*?\bbody=%?([\w.\-]+)")
_ARRAY = re.compile(r"\b(pred|[su]\d+|bf16|f\d+\w*|c64|c128)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16, "c64": 64, "c128": 128}


def _array_bytes(dtype: str, dims: str) -> float:
  bits = _BITS.get(dtype) or int(re.match(r"[a-z]+(\d+)", dtype).group(1))
  return math.prod(int(d) for d in dims.split(",") if d) * bits / 8


def hlo_collectives(hlo: str) -> dict[str, dict]:
  """Collectives in compiled HLO text: {op: {count, bytes, loop_count, loop_bytes}}. `bytes`
  is the size of each op's result (async `-start` ops: their largest buffer); `loop_*` are
  the ones inside a while loop's body (run once per iteration, e.g. per decoded token)."""
  calls: dict[str, set[str]] = {}
  found: dict[str, list[tuple[str, float]]] = {}
  loop_roots: set[str] = set()
  current = None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      current = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
      current = current.lstrip("%")
      calls.setdefault(current, set())
      continue
    if current is None:
      continue
    callees = set(_CALLEE.findall(line))
    for group in _BRANCHES.findall(line):
      callees.update(c.strip().lstrip("%") for c in group.split(","))
    calls[current].update(callees)
    loop_roots.update(_WHILE.findall(line))
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    shape, opcode = m.groups()
    if opcode.endswith("-done"):
      continue
    base = opcode.removesuffix("-start")
    if base not in COLLECTIVES:
      continue
    sizes = [_array_bytes(*a) for a in _ARRAY.findall(shape)]
    nbytes = max(sizes, default=0) if opcode.endswith("-start") else sum(sizes)
    found.setdefault(current, []).append((base, nbytes))
  in_loop, todo = set(), list(loop_roots)
  while todo:
    name = todo.pop()
    if name not in in_loop:
      in_loop.add(name)
      todo.extend(calls.get(name, ()))
  out: dict[str, dict] = {}
  for comp, ops in found.items():
    for op, nbytes in ops:
      row = out.setdefault(op, dict(count=0, bytes=0, loop_count=0, loop_bytes=0))
      row["count"] += 1
      row["bytes"] += int(nbytes)
      if comp in in_loop:
        row["loop_count"] += 1
        row["loop_bytes"] += int(nbytes)
  return out


_OOM_TEMPS = re.compile(
  r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"
)
_OOM_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")


def _gib(value: str, unit: str) -> float:
  return float(value) * 1024.0 ** ("KMGT".index(unit) + 1 if unit else 0) / GiB


def compile_oom(error: Exception) -> dict | None:
  """The compiler's out-of-memory numbers, or None when the error is something else."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
    return None
  out = {"message": text.strip().splitlines()[0][:500]}
  if m := _OOM_TEMPS.search(text):
    out.update(temp_gib=_gib(*m.groups()[:2]), available_gib=_gib(*m.groups()[2:]))
  elif m := _OOM_USED.search(text):
    out.update(used_gib=_gib(*m.groups()[:2]), available_gib=_gib(*m.groups()[2:]))
  return out


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


# --- one plan ------------------------------------------------------------------------------


def plan(
  cfg,
  topology: str,
  mesh_shape: Mapping[str, int],
  steps: Sequence[str] = ("train", "decode"),
  prompt_len: int = 512,
  image_patches: int = 256,
  cpu: bool = False,
  progress=print,
) -> dict:
  """Compile the train and/or decode step of CDRL config `cfg` for `topology` on a mesh of
  `mesh_shape`; return the report (see the module docstring)."""
  import jax

  from catts_jax.rl.learner import OptimizerConfig
  from catts_jax.sampling import Sampler, SamplingConfig

  began = time.perf_counter()
  chip, chips = chip_for(topology)
  devices, backend = topology_devices(topology, cpu)
  tpu = backend.startswith("tpu")
  mesh = build_mesh(mesh_shape, devices, tpu)
  model_cfg = model_config(cfg)
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
    from catts_jax.rl.grpo import LossConfig
    from catts_jax.rl.learner import jit_train_step, make_train_step

    batch = train_batch(model_cfg, shapes, mesh, solution_rows=cfg.loss.sft_coef > 0)
    step_fn = make_train_step(state.graphdef, state.rest, state.optimizer, LossConfig(**cfg.loss.to_dict()))
    jitted = jit_train_step(
      step_fn,
      shapes.response_len,
      mesh,
      state.param_shardings,
      state.opt_shardings,
      {k: v.sharding for k, v in batch.items()},
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
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding

  from catts_jax import sharding
  from catts_jax.models.qwen2_5_vl.text import init_cache

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


def print_report(report: dict) -> None:
  s, st = report["shapes"], report["per_chip_state_gib"]
  print(
    f"{report['model']['preset']} ({report['model']['params'] / 1e9:.3g}B params, remat={report['model']['remat']}) "
    f"on {report['topology']}: {report['chips']} x {report['chip']['name']} ({report['chip']['hbm_gib']} GiB usable HBM), "
    f"mesh {report['mesh']}"
  )
  print(f"backend: {report['backend']}")
  print(
    f"train batch {s['rows']} rows x {s['seq_len']} tokens (response {s['response_len']}, {s['patches']} patches); "
    f"decode {s['prompt_rows']} prompts x {s['group']} samples, cache {s['prompt_len'] + s['max_new_tokens']}"
  )
  print(
    f"per chip state: params {st['params']:.2f} GiB, optimizer {st['optimizer']:.2f} GiB, reference {st['reference']:.2f} GiB"
  )
  head = f"{'step':7s} {'arg':>7s} {'out':>7s} {'alias':>7s} {'temp':>7s} {'code':>6s} {'peak':>7s} {'+resid':>7s} {'total':>7s} {'HBM':>6s} {'verdict':>13s} {'TFLOP':>7s} {'compile s':>9s}"
  print(head)
  for name, r in report["steps"].items():
    m = {k: v / GiB for k, v in r.get("memory_bytes", {}).items()}
    if m:
      print(
        f"{name:7s} {m['argument']:7.2f} {m['output']:7.2f} {m['alias']:7.2f} {m['temp']:7.2f} {m['code']:6.2f} "
        f"{m['peak']:7.2f} {r['resident_outside_bytes'] / GiB:7.2f} {r['total_gib']:7.2f} {r['hbm_gib']:6.2f} "
        f"{verdict(r):>13s} {r['flops'] / 1e12:7.1f} {r['compile_s']:9.1f}"
      )
    else:
      why = r.get("reason") or r.get("oom", {}).get("message", "")
      print(f"{name:7s} {verdict(r):>13s}: {why}")
  for name, r in report["steps"].items():
    if r.get("collectives"):
      parts = [
        f"{op} {c['count']}x {c['bytes'] / GiB:.2f} GiB"
        + (f" ({c['loop_count']} per token)" if c["loop_count"] else "")
        for op, c in sorted(r["collectives"].items())
      ]
      print(f"{name} collectives: " + ", ".join(parts))
    elif r.get("collectives_error"):
      print(f"{name} collectives: n/a ({r['collectives_error']})")
  print(f"fits: {'yes' if report['fits'] else 'NO'} ({report['seconds']:.0f} s)")


# --- sweep ---------------------------------------------------------------------------------


def sweep_cells(models, topologies, strategies, shapes, extra=()) -> list[tuple[str, str, str, str]]:
  cells = list(itertools.product(models, topologies, strategies, shapes))
  cells += [tuple(e.split("/")) for e in extra]
  for cell in cells:
    if len(cell) != 4:
      raise ValueError(f"sweep cell {cell}: expected model/topology/strategy/PxGxR")
  return cells


def cell_name(model, topology, strategy, shape) -> str:
  return f"{model}_{topology.replace(':', '-')}_{strategy}_{shape}"


def cell_command(model, topology, strategy, shape, out: pathlib.Path, steps, image_patches: int) -> list[str]:
  p, g, r, *i = shape.split("x")
  return [
    sys.executable,
    "-m",
    "train.compile",
    f"--config={CONFIG_FILE}:{model},cpu",
    f"--config.train.prompts_per_step={p}",
    f"--config.rollout.group_size={g}",
    f"--config.rollout.max_new_tokens={r}",
    f"--topology={topology}",
    f"--strategy={strategy}",
    f"--steps={','.join(steps)}",
    f"--image_patches={i[0] if i else image_patches}",
    f"--out={out}",
  ]


def summary_row(name: str, cell, report: dict | None, error: str | None = None) -> dict:
  model, topology, strategy, shape = cell
  row = dict(name=name, model=model, topology=topology, strategy=strategy, shape=shape)
  if report is None:
    return row | {"error": error, "fits": False}
  row.update(
    chips=report["chips"],
    hbm_gib=report["chip"]["hbm_gib"],
    mesh=report["mesh"],
    backend=report["backend"],
    rows=report["shapes"]["rows"],
    seq_len=report["shapes"]["seq_len"],
    image_patches=report["shapes"]["image_patches"],
    state_gib=report["per_chip_state_gib"]["total"],
    fits=report["fits"],
    seconds=report["seconds"],
    steps={},
  )
  for step, r in report["steps"].items():
    row["steps"][step] = dict(
      verdict=verdict(r),
      peak_gib=r.get("peak_gib"),
      total_gib=r.get("total_gib"),
      compile_s=r.get("compile_s"),
      tflops=r.get("flops", 0) / 1e12 if r.get("compiled") else None,
      compute_floor_s=r.get("compute_floor_s"),
      collective_gib=sum(c["bytes"] for c in r["collectives"].values()) / GiB
      if r.get("collectives")
      else None,
      oom=r.get("oom"),
      reason=r.get("reason"),
    )
  return row


def run_sweep(out: pathlib.Path, cells, steps, timeout: int, image_patches: int = 256) -> list[dict]:
  out.mkdir(parents=True, exist_ok=True)
  log = out / "sweep.jsonl"
  done = {}
  if log.exists():
    for line in log.read_text().splitlines():
      if line.strip():
        row = json.loads(line)
        report_file = out / "runs" / row["name"] / "report.json"
        if "error" not in row and "same_as" not in row and report_file.exists():  # as this code summarises
          cell = (row["model"], row["topology"], row["strategy"], row["shape"])
          row = summary_row(row["name"], cell, json.loads(report_file.read_text()))
        if row.get("same_as") in done:
          row = dict(done[row["same_as"]], name=row["name"], strategy=row["strategy"], same_as=row["same_as"])
        done[row["name"]] = row
  from configs.cdrl_qwen2_5_vl import STRATEGIES

  def resolved(cell):
    model, topology, strategy, shape = cell
    return (model, topology, tuple(mesh_sizes(STRATEGIES[strategy], chip_for(topology)[1]).items()), shape)

  same_as = {}
  for i, cell in enumerate(cells):
    name = cell_name(*cell)
    if name in done:
      same_as.setdefault(resolved(cell), name)
      continue
    twin = same_as.setdefault(resolved(cell), name)
    if twin != name:  # e.g. fsdp_tp and tp on 4 chips: the same mesh, compiled once
      row = dict(done[twin], name=name, strategy=cell[2], same_as=twin)
      done[name] = row
      with log.open("a") as f:
        f.write(json.dumps(row) + "\n")
      continue
    cell_out = out / "runs" / name
    cell_out.mkdir(parents=True, exist_ok=True)
    print(f"[{i + 1}/{len(cells)}] {name}", flush=True)
    env = dict(os.environ)
    with (cell_out / "log.txt").open("w") as f:
      try:
        proc = subprocess.run(
          cell_command(*cell, cell_out, steps, image_patches),
          stdout=f,
          stderr=subprocess.STDOUT,
          timeout=timeout,
          env=env,
        )
        error = None if proc.returncode == 0 else f"exit status {proc.returncode} (see runs/{name}/log.txt)"
      except subprocess.TimeoutExpired:
        error = f"compile timed out after {timeout} s"
    report_file = cell_out / "report.json"
    report = json.loads(report_file.read_text()) if error is None and report_file.exists() else None
    row = summary_row(name, cell, report, error)
    done[name] = row
    with log.open("a") as f:
      f.write(json.dumps(row) + "\n")
  return [done[cell_name(*c)] for c in cells]


def _fmt(x, spec=".1f", missing="-") -> str:
  return missing if x is None else format(x, spec)


def _memory_cell(step: dict | None, state_gib: float) -> str:
  """'peak / total' GiB per chip; for a compile-time OOM the compiler's temporaries and a
  lower bound of the total (temporaries + state); for a state OOM the state."""
  if step is None:
    return ""
  if step.get("peak_gib") is not None:
    return f"{step['peak_gib']:.1f} / {step['total_gib']:.1f}"
  temp = (step.get("oom") or {}).get("temp_gib")
  if temp is not None:
    return f"temps {temp:,.1f} / &ge; {temp + state_gib:,.1f}"
  if step["verdict"] == "OOM (state)":
    return f"state {state_gib:.1f}"
  return ""


def sweep_markdown(rows: list[dict]) -> str:
  """One row per cell: train and decode memory per chip, verdicts, cost and compile time."""
  lines = [
    "| model | topology | strategy (data/fsdp/tensor) | P x G x R, image patches | train batch | state GiB/chip "
    "| train peak / total GiB/chip | train | decode peak / total GiB/chip | decode | HBM GiB | train TFLOP/chip "
    "| train collectives GiB/chip | compile s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if "error" in r:
      lines.append(
        f"| {r['model']} | {r['topology']} | {r['strategy']} | {r['shape']} | | | | error: {r['error']} | | | | | | |"
      )
      continue
    mesh = "/".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    train, decode = r["steps"].get("train"), r["steps"].get("decode")
    shape = "x".join(r["shape"].split("x")[:3])
    compile_s = (
      " + ".join(f"{s['compile_s']:.0f}" for s in (train, decode) if s and s.get("compile_s")) or "-"
    )
    if train and train.get("verdict") == "batch does not divide":
      train_cell = ""
    else:
      train_cell = _memory_cell(train, r["state_gib"])
    collectives = "-"
    if train and train.get("collective_gib") is not None:
      collectives = f"{train['collective_gib']:.0f}"
    elif train and train.get("peak_gib") is not None:
      collectives = "n/a"
    lines.append(
      f"| {r['model']} | {r['topology']} ({r['chips']} chips) | {r['strategy']} ({mesh}) | {shape}, {r['image_patches']} "
      f"| {r['rows']} x {r['seq_len']} | {r['state_gib']:.1f} | {train_cell} | **{train['verdict'] if train else '-'}** "
      f"| {_memory_cell(decode, r['state_gib'])} | **{decode['verdict'] if decode else '-'}** | {r['hbm_gib']:.2f} "
      f"| {_fmt(train.get('tflops') if train else None, '.0f')} | {collectives} | {compile_s} |"
    )
  return "\n".join(lines)


def render_markdown(path: pathlib.Path, table: str) -> None:
  start, end = "<!-- sweep-table:start -->", "<!-- sweep-table:end -->"
  text = path.read_text()
  if start not in text or end not in text:
    raise ValueError(f"{path}: no {start} ... {end} block to replace")
  head, rest = text.split(start)
  _, tail = rest.split(end)
  path.write_text(f"{head}{start}\n{table}\n{end}{tail}")


# --- entry point ---------------------------------------------------------------------------


def _ensure_cpu_devices(n: int) -> None:
  """Give the CPU fallback n devices (only effective before jax starts its CPU backend)."""
  flag = "--xla_force_host_platform_device_count"
  if flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={n}".strip()


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # jax logs its failed TPU backend probe at INFO
  if not _OUT.value:
    raise app.UsageError("--out is required")
  out = pathlib.Path(_OUT.value)
  if _SWEEP.value:
    cells = sweep_cells(
      _SWEEP_MODELS.value,
      _SWEEP_TOPOLOGIES.value,
      _SWEEP_STRATEGIES.value,
      _SWEEP_SHAPES.value,
      _SWEEP_EXTRA.value,
    )
    rows = run_sweep(out, cells, _SWEEP_STEPS.value, _SWEEP_TIMEOUT.value, _SWEEP_IMAGE_PATCHES.value)
    table = sweep_markdown(rows)
    (out / "sweep.md").write_text(table + "\n")
    (out / "report.json").write_text(json.dumps({"cells": rows}, indent=2))
    if _MARKDOWN.value:
      render_markdown(pathlib.Path(_MARKDOWN.value), table)
    print(table)
    return
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config is required (or --sweep)")
  topology = _TOPOLOGY.value or cfg.get("topology", "")
  if not topology:
    raise app.UsageError("--topology is required (the config names none), e.g. --topology v5e:4x4")
  try:
    _, chips = chip_for(topology)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  _ensure_cpu_devices(chips)
  from configs.cdrl_qwen2_5_vl import STRATEGIES

  if _MESH.value:
    mesh_shape = parse_mesh(_MESH.value)
  elif _STRATEGY.value:
    mesh_shape = STRATEGIES[_STRATEGY.value]
  else:
    mesh_shape = dict(cfg.mesh)
  try:
    mesh_sizes(mesh_shape, chips)
  except ValueError as e:
    raise app.UsageError(f"{e} of {topology}: pass --strategy or --mesh") from e
  unknown = set(_STEPS.value) - {"train", "decode"}
  if unknown:
    raise app.UsageError(f"--steps: unknown {sorted(unknown)}; expected train, decode")
  report = plan(
    cfg,
    topology,
    mesh_shape,
    steps=_STEPS.value,
    prompt_len=_PROMPT_LEN.value,
    image_patches=_IMAGE_PATCHES.value,
    cpu=_CPU.value,
    progress=lambda msg: print(msg, flush=True),
  )
  report["strategy"] = _STRATEGY.value or ("custom" if _MESH.value else "config")
  report["config"] = cfg.to_dict()
  out.mkdir(parents=True, exist_ok=True)
  (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
  print_report(report)


if __name__ == "__main__":
  define_flags()
  app.run(main)
