"""Scoring and generation throughput of catts_jax against transformers, with rooflines.

    python -m infer.bench --out runs/bench            # CPU, float32
    python -m infer.bench --out runs/bench_gpu --device gpu   # one GPU, float32 and bfloat16
    python -m infer.bench --render_readme docs/results.md --reports runs/bench/report.json,...
    python -m infer.bench --catts --out runs/bench_catts   # CA-TTS end to end: batched vs serial
    python -m infer.bench --catts --shape 1.5b --out runs/bench_catts_1p5b   # a 1.5B-shaped policy (GPU)

One fixed model with random weights (preset "bench"); both sides get the same weights and
inputs, alternating; the first call of each shape is reported apart, times are medians over
`--repeats`; the rooflines use a matmul ceiling and a memory bandwidth measured on the spot.
catts_jax/bench.py says what each case measures and how; catts_jax/tts/bench.py what --catts
measures.
"""

from __future__ import annotations

import pathlib
import sys

import jax
from absl import flags

from catts_jax import bench, cli, runs
from catts_jax.tts import bench as catts_bench
from configs import catts as catts_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("out", None, "directory for report.json", flag_values=fv)
  flags.DEFINE_string(
    "render_readme",
    None,
    "a Markdown file whose bench-table block is rewritten from --reports; runs nothing",
    flag_values=fv,
  )
  flags.DEFINE_list("reports", [], "report.json files for --render_readme", flag_values=fv)
  flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "where to run", flag_values=fv)
  flags.DEFINE_integer("repeats", 5, "timed rounds per case (median)", flag_values=fv)
  flags.DEFINE_integer("score_batch", 8, "scoring: rows", flag_values=fv)
  flags.DEFINE_integer("score_len", 256, "scoring: tokens per row", flag_values=fv)
  flags.DEFINE_list("gen_batches", ["1", "8", "32"], "generation: batch sizes", flag_values=fv)
  flags.DEFINE_integer("prompt_len", 32, "generation: prompt tokens", flag_values=fv)
  flags.DEFINE_integer("new_tokens", 64, "generation: new tokens", flag_values=fv)
  flags.DEFINE_bool("catts", False, "CA-TTS end to end instead: batched engine vs serial", flag_values=fv)
  flags.DEFINE_string(
    "ckpt", str(ROOT / "checkpoints" / "synthetic_cdrl"), "--catts: the policy", flag_values=fv
  )
  flags.DEFINE_string(
    "shape",
    None,
    "--catts: time a random-weight checkpoint of this preset's shape (e.g. 1.5b) that speaks --ckpt's "
    "tokenizer, built into OUT/checkpoint, instead of --ckpt itself",
    flag_values=fv,
  )
  flags.DEFINE_integer("problems", 64, "--catts: synthetic test problems", flag_values=fv)
  flags.DEFINE_integer("n", 16, "--catts: the largest N (runs N = 1, 2, 4, ..., n)", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 64, "--catts: samples' and re-answers' budget", flag_values=fv)
  flags.DEFINE_integer("solve_batch", 32, "--catts: problems through the modules together", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "--catts: tfds cache for the synthetic dataset", flag_values=fv)


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  if args.render_readme:
    if not args.reports:
      print("error: --render_readme needs --reports a/report.json,b/report.json", file=sys.stderr)
      return 2
    bench.render_readme(pathlib.Path(args.render_readme), [pathlib.Path(r) for r in args.reports])
    return 0
  if not args.out:
    print("error: --out is required", file=sys.stderr)
    return 2
  if args.catts:
    ckpt = args.ckpt
    if args.shape:
      ckpt = str(catts_bench.shaped_checkpoint(pathlib.Path(args.out) / "checkpoint", args.shape, args.ckpt))
    settings = catts_bench.Settings(
      ckpt=ckpt, problems=args.problems, n=args.n, max_new_tokens=args.max_new_tokens,
      solve_batch=args.solve_batch, data_dir=args.data_dir,
    )  # fmt: skip
    report = catts_bench.run(settings, catts_config.get_config(), pathlib.Path(args.out))
    catts_bench.write(pathlib.Path(args.out), report)
    print(catts_bench.table(report))
    return 0
  if args.device == "gpu" and jax.default_backend() != "gpu":
    print(f"error: --device gpu but jax's backend is {jax.default_backend()}", file=sys.stderr)
    return 2
  settings = bench.Settings(
    device=args.device,
    repeats=args.repeats,
    score_batch=args.score_batch,
    score_len=args.score_len,
    gen_batches=tuple(int(b) for b in args.gen_batches),
    prompt_len=args.prompt_len,
    new_tokens=args.new_tokens,
  )
  report = bench.run(settings)
  runs.write_json(pathlib.Path(args.out) / "report.json", report)
  print(bench.table(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
