"""Ahead-of-time sharding plans: will a CDRL step fit a TPU topology, and what does it cost?

    python -m train.compile --config configs/cdrl_qwen2_5_vl.py:7b,v5e-16 --out DIR
    python -m train.compile --config configs/cdrl_qwen2_5_vl.py:7b,v5e-16 --topology v5p:2x2x2 \
      --strategy fsdp --out DIR          # or --mesh data=1,fsdp=8,tensor=1
    python -m train.compile --config configs/cdrl_qwen2_5_vl.py:7b,v5e-16 --config.rollout.group_size=4 --out DIR

No weights are created: the model is built with `nnx.eval_shape`, params and optimizer
state get their shardings from the logical-axis rules (catts_jax/sharding.py), and the real
CDRL step's three parts, with the layouts `train.cdrl` runs them with: the sampler's prefill
and decode loop (`generate`), the scorer's pass (`score`) and the train step (`train`,
`rl.learner.make_train_step` jitted as the Learner jits it), are lowered from `jax.ShapeDtypeStruct`s and
compiled for the topology's devices from `jax.experimental.topologies.get_topology_desc`
(needs libtpu: `pip install -e '.[tpu]'`; no TPU needed). Without libtpu the same program is
compiled for simulated CPU devices, and the report says so (the CPU compiler's buffers and
fusions differ from the TPU's: treat those numbers as rough). What the report holds:
catts_jax/aot/plan.py. `DIR/report.json` holds it all; the exit status is 0 whenever a report
was written, fits or not.

Shapes follow the trainer: a train batch of prompts_per_step x group_size rows (rounded up to
a power of two, as the Processor buckets them), each `--prompt_len` prompt tokens (holding one
`--image_patches`-patch image) plus `max_new_tokens` response tokens, rounded up to a power of
two (or finer, as `model.buckets_per_octave` asks); the decode loop over the same rows with a
KV cache of prompt + max_new_tokens slots; each prompt's image encoded once, its slot shared by
the prompt's rows. `--replicated_rollout` also compiles generate with every row on every chip
(the layout before rows were sharded), for comparison. A grid of plans: `python -m train.sweep`.
`--render_readme docs/sharding.md --reports A/report.json,B/report.json` rewrites the page's
plan table from reports, compiling nothing.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from absl import flags, logging
from ml_collections import config_flags

from catts_jax import cli, runs
from catts_jax.aot import hardware
from configs.cdrl_qwen2_5_vl import STRATEGIES

STEPS = ("generate", "score", "train")  # catts_jax.aot.plan.STEPS (imported late: it starts jax)


def define(fv: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file(
    "config",
    None,
    "a CDRL config, e.g. configs/cdrl_qwen2_5_vl.py:7b,v5e-16",
    lock_config=True,
    flag_values=fv,
  )
  flags.DEFINE_string("out", None, "output directory (report.json)", flag_values=fv)
  flags.DEFINE_string(
    "render_readme",
    None,
    "a Markdown file whose plan-table block is rewritten from --reports; compiles nothing",
    flag_values=fv,
  )
  flags.DEFINE_list("reports", [], "plan report.json files for --render_readme", flag_values=fv)
  flags.DEFINE_string(
    "topology", None, "TPU topology, e.g. v5e:4x4, v5p:2x2x2 (default: the config's)", flag_values=fv
  )
  flags.DEFINE_string("mesh", None, "mesh axes, e.g. data=1,fsdp=16,tensor=1 (-1: the rest)", flag_values=fv)
  flags.DEFINE_enum("strategy", None, list(STRATEGIES), "a named mesh (configs)", flag_values=fv)
  flags.DEFINE_list("steps", list(STEPS), f"which steps to compile: {', '.join(STEPS)}", flag_values=fv)
  flags.DEFINE_integer("prompt_len", 512, "prompt tokens per problem (image tokens included)", flag_values=fv)
  flags.DEFINE_integer("image_patches", 256, "patches of the one image per prompt (0: text)", flag_values=fv)
  flags.DEFINE_bool(
    "cpu", False, "compile for simulated CPU devices even when libtpu is present", flag_values=fv
  )
  flags.DEFINE_bool(
    "replicated_rollout", False, "also compile generate with every row on every chip", flag_values=fv
  )
  flags.DEFINE_bool(
    "rollout_only_if_trains", False, "compile generate and score only if the train step fits", flag_values=fv
  )


def _usage(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 2


def _render(markdown: str, reports: list[str]) -> int:
  """Rewrite the plan-table block of `markdown` from plan reports (figures never typed by hand)."""
  if not reports:
    return _usage("--render_readme needs --reports a/report.json,b/report.json")
  import json

  from catts_jax.aot import sweep

  table = sweep.plans_markdown({path: json.loads(pathlib.Path(path).read_text()) for path in reports})
  runs.replace_block(markdown, "plan-table", table)
  print(table)
  return 0


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  logging.set_verbosity(logging.WARNING)  # jax logs its failed TPU backend probe at INFO
  if args.render_readme:
    return _render(args.render_readme, args.reports)
  if not args.out:
    return _usage("--out is required")
  cfg = args.config
  if cfg is None:
    return _usage("--config is required, e.g. configs/cdrl_qwen2_5_vl.py:7b,v5e-16 (a grid: train.sweep)")
  topology = args.topology or cfg.get("topology", "")
  if not topology:
    return _usage("--topology is required (the config names none), e.g. --topology v5e:4x4")
  try:
    _, chips = hardware.chip_for(topology)
  except ValueError as e:
    return _usage(str(e))
  unknown = set(args.steps) - set(STEPS)
  if unknown:
    return _usage(f"--steps: unknown {sorted(unknown)}; expected {', '.join(STEPS)}")
  from catts_jax.aot import devices

  devices.ensure_cpu_devices(chips)  # before jax starts its CPU backend (the fallback's devices)
  from catts_jax.aot import hlo

  out = pathlib.Path(args.out)
  # The compiler's own HLO dump: the collectives of programs XLA cannot print back. Large
  # (buffer assignments of every program), so in a temporary directory.
  dump = tempfile.TemporaryDirectory(prefix="catts-hlo-")
  hlo.dump_compiled_hlo(dump.name)
  from catts_jax import sharding
  from catts_jax.aot import plan

  try:
    if args.mesh:
      mesh_shape = sharding.parse_mesh(args.mesh)
    else:
      mesh_shape = STRATEGIES[args.strategy] if args.strategy else dict(cfg.mesh)
    sharding.mesh_sizes(mesh_shape, chips)
  except ValueError as e:
    return _usage(f"{e} ({topology}: {chips} chips): pass --strategy or --mesh")
  report = plan.plan(
    cfg,
    topology,
    mesh_shape,
    steps=args.steps,
    prompt_len=args.prompt_len,
    image_patches=args.image_patches,
    cpu=args.cpu,
    replicated_rollout=args.replicated_rollout,
    rollout_only_if_trains=args.rollout_only_if_trains,
    progress=lambda msg: print(msg, flush=True),
  )
  report["strategy"] = args.strategy or ("custom" if args.mesh else "config")
  report["config"] = cfg.to_dict()
  dump.cleanup()
  runs.write_json(out / "report.json", report, default=str)
  print(plan.format_report(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
