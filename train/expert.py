"""A from-scratch CA-TTS Expert: `python -m train.expert --config configs/synthetic_expert.py [--config.x=y] --out DIR`.

Trains an Expert for the Planner, Voter and Critic roles (the requests CA-TTS sends, prompts
"ours") and as a plain solver, on the synthetic train split and the bundled policy's sampled
answers (catts_jax/rl/expert_sft.py). DIR holds the policy's samples, checkpoints (a rerun with
the same --out resumes without sampling again), train.jsonl, the HF export in DIR/final, the
evaluation on validation in DIR/eval.jsonl and the summary in DIR/report.json; prints the
parse rate per role, the Voter against majority voting and both models' solving accuracy. A
non-finite loss stops the run with exit code 3.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags, logging
from ml_collections import config_flags

from catts_jax import cli, runs
from catts_jax.eval import report
from catts_jax.rl import expert_sft


def define(fv: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file(
    "config", None, "an Expert config, e.g. configs/synthetic_expert.py", lock_config=True, flag_values=fv
  )
  flags.DEFINE_string(
    "out",
    None,
    "output directory (samples, checkpoints, train.jsonl, final/, eval.jsonl, report.json)",
    required=True,
    flag_values=fv,
  )


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  if args.config is None:
    print("error: --config is required, e.g. configs/synthetic_expert.py", file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  try:
    summary = expert_sft.train(args.config, pathlib.Path(args.out))
  except runs.OutDirError as e:  # --out held by another run, or not writable
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(f"{e}; stopping", file=sys.stderr)
    return 3
  print(report.text_table(expert_sft.table(summary)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
