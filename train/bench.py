"""CDRL train-step (or rollout) time and MFU on one device, with random weights.

    python -m train.bench --config configs/cdrl_qwen2_5_vl.py:small,cpu --config.model.dtype=float32 \
      --out docs/reports/train_bench_cpu
    python -m train.bench --device gpu --config configs/cdrl_qwen2_5_vl.py:1.5b,gpu-1 --out DIR
    python -m train.bench --part rollout --device gpu --config configs/cdrl_qwen2_5_vl.py:1.5b,gpu-1 --out DIR

`--part rollout` times the sampler instead: `--rows` / group_size prompts of `--prompt_len`
tokens, group_size samples each of exactly `--response_len` tokens, from weights cast once to
the compute dtype (catts_jax/aot/measure.py `rollout`); generated tokens/s and MFU.

The model (random weights, the config's dtype / master-weight dtype / remat), the real
`Learner` and a synthetic rollout batch: `--rows` rows of `--prompt_len` prompt tokens holding
one `--image_patches`-patch image, then `--response_len` response tokens; the first step
(compilation) timed apart, then `--steps` steps, median. Model FLOPs are analytic and checked
against XLA's count; MFU is against the chip's nominal peak (GPUs) and a matmul ceiling
measured on the spot (catts_jax/aot/measure.py says how).
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags, logging
from ml_collections import config_flags

from catts_jax import cli, runs


def define(fv: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file(
    "config",
    None,
    "a CDRL config, e.g. configs/cdrl_qwen2_5_vl.py:1.5b,gpu-1",
    lock_config=True,
    flag_values=fv,
  )
  flags.DEFINE_string("out", None, "output directory (report.json)", required=True, flag_values=fv)
  flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "where to run", flag_values=fv)
  flags.DEFINE_enum(
    "part", "train", ["train", "rollout"], "the train step or the rollout sampler", flag_values=fv
  )
  flags.DEFINE_integer("rows", 8, "rows per train step (prompts x group)", flag_values=fv)
  flags.DEFINE_integer("prompt_len", 512, "prompt tokens per row (image tokens included)", flag_values=fv)
  flags.DEFINE_integer("response_len", 512, "response tokens per row", flag_values=fv)
  flags.DEFINE_integer("image_patches", 256, "patches of one square image per row (0: text)", flag_values=fv)
  flags.DEFINE_integer("steps", 5, "timed steps after the first", flag_values=fv)


def print_report(r: dict) -> None:
  m, b = r["model"], r["batch"]
  print(
    f"{r['device']} (jax {r['jax']}): {m['preset']} {m['params'] / 1e9:.3g}B params "
    f"({m['dtype']} compute, {m['param_dtype']} master, remat={m['remat']})"
  )
  print(
    f"batch {b['rows']} rows x {b['seq_len']} tokens (response {b['response_len']}, image {b['image_patches']} patches)"
  )
  mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
  memory = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "n/a"
  print(
    f"{'compile s':>10s} {'step s':>8s} {'tok/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} {'of matmul':>9s} {'XLA/model':>9s} {'peak mem':>9s}"
  )
  print(
    f"{r['compile_s']:10.1f} {r['step_s']:8.3f} {r['tokens_per_s']:9.0f} {r['achieved_tflops']:8.2f} {mfu:>6s} "
    f"{r['mfu_of_measured_matmul']:9.1%} {r['xla_over_model_flops']:9.2f} {memory:>9s}"
  )


def print_rollout(r: dict) -> None:
  b = r["batch"]
  mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
  print(
    f"{r['device']} (jax {r['jax']}): {r['model']['preset']} in {r['model']['dtype']}, {b['prompts']} prompts x "
    f"{b['group']} samples x {b['new_tokens']} tokens after {b['prompt_len']}"
  )
  print(
    f"compile {r['compile_s']:.1f} s, step {r['step_s']:.3f} s: {r['tokens_per_s']:.0f} tokens/s, MFU {mfu}"
  )


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  logging.set_verbosity(logging.WARNING)  # jax logs its failed TPU backend probe at INFO
  if args.config is None:
    print("error: --config is required, e.g. configs/cdrl_qwen2_5_vl.py:1.5b,gpu-1", file=sys.stderr)
    return 2
  import jax

  if args.device == "gpu" and jax.default_backend() != "gpu":
    print(f"error: --device gpu but jax's backend is {jax.default_backend()}", file=sys.stderr)
    return 2
  if args.device == "cpu":
    jax.config.update("jax_platforms", "cpu")
  from catts_jax.aot import measure

  if args.part == "rollout":
    group = args.config.rollout.group_size
    if args.rows % group:
      print(f"error: --rows {args.rows} is not a multiple of group_size {group}", file=sys.stderr)
      return 2
    report = measure.rollout(
      args.config, args.rows // group, args.prompt_len, args.response_len, args.image_patches, args.steps
    )
  else:
    report = measure.train_step(
      args.config, args.rows, args.prompt_len, args.response_len, args.image_patches, args.steps, args.device
    )
  report["config"] = args.config.to_dict()
  runs.write_json(pathlib.Path(args.out) / "report.json", report, default=str)
  (print_rollout if args.part == "rollout" else print_report)(report)
  return 0


if __name__ == "__main__":
  sys.exit(main())
