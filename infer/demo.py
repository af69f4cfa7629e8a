"""The demo: the bundled tiny checkpoints' calibration and test-time scaling, on CPU in minutes.

    python -m infer.demo --out runs/demo [--sft checkpoints/synthetic_sft] \\
        [--cdrl checkpoints/synthetic_cdrl] [--expert checkpoints/synthetic_expert] \\
        [--split test] [--limit K] [--render_readme docs/results.md]

1. Before/after CDRL: greedy answers of the SFT and the CDRL checkpoint on the synthetic test
   split, each answer scored on its image and, teacher-forced, under VCD noise at full
   strength (the image is gone): accuracy, ECE, AUROC, confidence drop.
2. CA-TTS and its baselines on the CDRL checkpoint (as infer.catts runs them, with
   configs/catts.py or `--config`, overridden as `--config.tts.tau=0.3`; samples at
   `--temperature`, 0.7), N = 1..16, on the test split (the
   first --limit problems if given). The Expert is `--expert` (checkpoints/synthetic_expert)
   served by `--expert_replicas` `transformers serve` processes on free local ports (started
   before stage 1, stopped after this one), and the module-by-module ablations run beside
   CA-TTS; then CA-TTS again with the policy as its own Expert on the same problems.
   `--expert self` runs only the latter.
3. The real-benchmark path: the CDRL checkpoint through Math-Vision testmini (--mv_limit 16;
   0 skips it).

`--split validation` runs stages 1 and 2 on the validation split instead: settings and
checkpoints are chosen there, so that the test split is only reported.

DIR/report.json holds the three stages and the demo's targets, each checked; DIR/report.md
the tables; PNGs: accuracy_vs_n.png (per CA-TTS run), reliability_{sft,cdrl}.png,
confidence_under_noise.png. Each stage resumes (a finished one is read back, a CA-TTS run
skips finished problems). `--render_readme FILE` rewrites FILE's demo-table block (the
README's tables live in docs/results.md) from report.json, and runs nothing.
"""

from __future__ import annotations

import logging
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from catts_jax import cli, demo, runs

ROOT = pathlib.Path(__file__).parents[1]


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("out", None, "output directory", required=True, flag_values=fv)
  cli.define_compilation_cache(fv)
  config_flags.DEFINE_config_file(
    "config", str(ROOT / "configs" / "catts.py"), "CA-TTS settings of stages 2 and 3", flag_values=fv
  )
  flags.DEFINE_string(
    "sft", str(ROOT / "checkpoints" / "synthetic_sft"), "the SFT checkpoint", flag_values=fv
  )
  flags.DEFINE_string(
    "cdrl", str(ROOT / "checkpoints" / "synthetic_cdrl"), "the CDRL checkpoint", flag_values=fv
  )
  flags.DEFINE_string("data_dir", None, "tfds cache for the synthetic dataset", flag_values=fv)
  flags.DEFINE_enum("split", "test", ["test", "validation"], "synthetic split of stages 1, 2", flag_values=fv)
  # Both stages default to the whole test split (256 problems): on 128, one problem is 0.8
  # points, as large as the methods' differences.
  flags.DEFINE_integer("calibration_size", None, "first K problems for stage 1", flag_values=fv)
  flags.DEFINE_integer("limit", None, "first K problems for CA-TTS (stage 2)", flag_values=fv)
  flags.DEFINE_string("n", "1,2,4,8,16", "sample counts N of stage 2", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 64, "decode length of every stage", flag_values=fv)
  # infer.catts' default; CA-TTS's accuracy on validation chose it over 1.0 and 1.3 for the
  # bundled checkpoint (docs/experiments/synthetic_cdrl.md has the runs).
  flags.DEFINE_float("temperature", 0.7, "sampling temperature of stages 2 and 3", flag_values=fv)
  flags.DEFINE_string("mathvision", str(ROOT.parent / "shared" / "data" / "math-vision-testmini"),
                      "the Math-Vision testmini release directory", flag_values=fv)  # fmt: skip
  flags.DEFINE_string(
    "expert", str(ROOT / "checkpoints" / "synthetic_expert"),
    "the Expert checkpoint stage 2 serves with `transformers serve`, or 'self' (the policy)", flag_values=fv,
  )  # fmt: skip
  # `transformers serve` answers one request at a time: a second process takes half the calls.
  flags.DEFINE_integer("expert_replicas", 2, "Expert server processes of stage 2", flag_values=fv)
  flags.DEFINE_integer("mv_limit", 16, "first K Math-Vision problems of stage 3; 0 skips it", flag_values=fv)
  flags.DEFINE_string(
    "render_readme", None, "only rewrite this Markdown file's demo-table block from --out", flag_values=fv
  )


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  if args.render_readme:
    demo.render_readme(args.render_readme, args.out)
    return 0
  # The tiny policy is its own Expert: its planner/voter/critic text rarely parses, and every
  # failed call is recorded in results.jsonl and counted in the report; no need for a warning
  # line per call. A process-wide setting, so it belongs to the program, not to demo.run().
  logging.getLogger("catts_jax.tts.expert").setLevel(logging.ERROR)
  try:
    with runs.locked(args.out):  # one demo at a time in --out
      result = demo.run(
        args.config, out=args.out, sft=args.sft, cdrl=args.cdrl, data_dir=args.data_dir,
        split=args.split, calibration_size=args.calibration_size, limit=args.limit, ns=args.n,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, mathvision=args.mathvision,
        mv_limit=args.mv_limit, expert=args.expert, expert_replicas=args.expert_replicas,
      )  # fmt: skip
  except (demo.InputError, runs.OutDirError) as err:  # a bad input; anything else keeps its traceback
    raise SystemExit(f"error: {err}") from None
  print(demo.markdown(result))
  print(f"\nwrote {pathlib.Path(args.out) / 'report.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
