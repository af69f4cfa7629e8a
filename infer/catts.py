"""CA-TTS and its baselines on a benchmark, every method on the same N samples per problem.

    python -m infer.catts --ckpt CKPT --benchmark mathvision --data DIR [--split S] [--limit K] \\
        --n 1,2,4,8,16,32 --methods catts,majority,deepconf,deepconf-online,best-of-n,greedy,vcd \\
        --expert http://127.0.0.1:8000/v1 --out DIR [--config configs/catts.py] [--config.tts.tau=0.3]

--expert: hf:<model-id> (HF Inference Providers, HF_TOKEN), http(s)://host[:port]/v1 (any
OpenAI-compatible server), self (the policy) or none. Writes DIR/results.jsonl (one row per
problem; a rerun with the same --out skips finished problems), DIR/report.json, DIR/report.md
and DIR/accuracy_vs_n.png, and prints the table: accuracy per method and N, ECE and AUROC at
the largest N, and the slope beta (accuracy points per doubling of N). The report is built from
results.jsonl alone. catts-adaptive replays CA-TTS with early stopping: at each N of the list
(a round), a problem stops once its confidence-weighted vote margin reaches
tts.adaptive_margin (after tts.adaptive_min_samples); its point is (mean samples used,
accuracy) for each cap N.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from catts_jax import cli, runs
from catts_jax.eval import report
from catts_jax.tts import run, summary
from catts_jax.tts.methods import DEFAULT_METHODS, METHODS

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "catts.py"


def define(fv: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file(
    "config", str(CONFIG), "CA-TTS settings (an ml_collections file)", flag_values=fv
  )
  flags.DEFINE_string("ckpt", None, "HF checkpoint directory (or a train/ run: its final/ export)",
                      required=True, flag_values=fv)  # fmt: skip
  flags.DEFINE_string("benchmark", None, "benchmark name (catts_jax.data)", required=True, flag_values=fv)
  flags.DEFINE_string("data", None, "the benchmark's release directory (synthetic: none)", flag_values=fv)
  flags.DEFINE_string("split", None, "default: the benchmark's evaluation split", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "where built datasets are cached", flag_values=fv)
  flags.DEFINE_integer("limit", None, "the first K problems", flag_values=fv)
  flags.DEFINE_string("n", "1,2,4,8,16,32", "sample counts N (the largest is drawn once)", flag_values=fv)
  flags.DEFINE_string(
    "methods", ",".join(DEFAULT_METHODS), f"comma-separated, of {','.join(METHODS)}", flag_values=fv
  )
  flags.DEFINE_string(
    "expert", "none", "hf:<model-id> | http(s)://host[:port]/v1 | self | none", flag_values=fv
  )
  flags.DEFINE_bool(
    "expert_check", True, "a remote --expert answers one probe call before the run starts", flag_values=fv
  )
  flags.DEFINE_bool(
    "allow_partial",
    False,
    "load a checkpoint holding tensors its config.json does not describe",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "rebuild", False, "build the benchmark's cache again (an edited folder is anyway)", flag_values=fv
  )
  flags.DEFINE_string("out", None, "output directory", required=True, flag_values=fv)
  cli.define_compilation_cache(fv)


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  try:
    with runs.locked(args.out):  # held for the whole run: a second one on --out stops at once
      return _main(args)
  except runs.OutDirError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2


def _main(args) -> int:
  try:
    job = run.prepare(
      args.config, ckpt=args.ckpt, benchmark=args.benchmark, out=args.out, data_path=args.data,
      split=args.split, data_dir=args.data_dir, limit=args.limit, ns=args.n, methods=args.methods,
      expert=args.expert, expert_check=args.expert_check, allow_partial=args.allow_partial,
      rebuild=args.rebuild,
    )  # fmt: skip
  except (ValueError, FileNotFoundError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2

  from tqdm import tqdm

  with tqdm(total=len(job.examples), desc="catts", unit="problem") as bar:
    result = job.run(progress=bar.update)
  print(report.text_table(result["table"], summary.columns(job.ns)))
  for line in summary.expert_lines(result.get("expert_calls") or {}):
    print(line)
  if result["errors"]:
    print(f"\n{result['errors']} problem(s) failed: {', '.join(result['error_ids'])}", file=sys.stderr)
  out = job.out
  print(f"\nwrote {out / 'report.json'}, {out / 'report.md'}, {out / 'accuracy_vs_n.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
