"""Supervised warm start: `python -m train.sft --config configs/synthetic_tiny.py [--config.x=y] --out DIR`.

Trains a policy on a benchmark's reference solutions (catts_jax/rl/sft.py), from `model.ckpt`
or from scratch when that is empty. Checkpoints in DIR/checkpoints (a rerun with the same
--out resumes), the loss in DIR/train.jsonl, the HF export in DIR/final and the summary
(loss, greedy accuracy, wall time) in DIR/report.json; prints the final evaluation. A
non-finite loss stops the run with exit code 3. A bad setting, or a resume whose config
differs from DIR/run.json's without --override_resume, is one line and exit code 2, before any
work (catts_jax/rl/validate.py).
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags, logging
from ml_collections import config_flags

from catts_jax import cli, runs
from catts_jax.eval import report
from catts_jax.rl import sft, validate


def define(fv: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file(
    "config", None, "an SFT config, e.g. configs/synthetic_tiny.py", lock_config=True, flag_values=fv
  )
  flags.DEFINE_string(
    "out",
    None,
    "output directory (checkpoints, train.jsonl, report.json, final/)",
    required=True,
    flag_values=fv,
  )
  cli.define_training_flags(fv)


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  if args.config is None:
    print("error: --config is required, e.g. configs/synthetic_tiny.py", file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  try:
    summary = sft.train(
      args.config, pathlib.Path(args.out), rebuild=args.rebuild, override_resume=args.override_resume
    )
  except (runs.OutDirError, validate.ConfigError) as e:  # --out held or not writable; a bad setting
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(f"{e}; stopping", file=sys.stderr)
    return 3
  print(report.text_table([{"steps": summary["steps"], **summary["eval"], "seconds": summary["seconds"]}]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
