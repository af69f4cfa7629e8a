"""CDRL training: `python -m train.cdrl --config configs/cdrl_tiny.py [--config.x=y] --out DIR`.

Runs or resumes the CDRL loop (catts_jax/rl/trainer.py): rollouts, rewards, policy updates,
checkpoints in DIR/checkpoints (a rerun with the same --out resumes), logs in DIR/train.jsonl
and DIR/tb, the final policy as an HF directory in DIR/final and DIR/report.json. A non-finite
loss or gradient stops the run with exit code 3 and leaves the last checkpoint intact. A bad
setting (catts_jax/rl/validate.py) is one line naming it and exit code 2, before any work; so
is a resume whose config differs from the one DIR/run.json recorded at the run's first start,
unless --override_resume (the change is recorded in run.json and train.jsonl).

Multi-host: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or pass
`--distributed` where `jax.distributed.initialize()` finds them itself (TPU pods); every
process runs this same command.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags, logging
from ml_collections import config_flags

from catts_jax import cli, runs
from catts_jax.rl import trainer, validate


def define(fv: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file(
    "config", None, "a CDRL config, e.g. configs/cdrl_tiny.py", lock_config=True, flag_values=fv
  )
  flags.DEFINE_string(
    "out", None, "output directory (checkpoints, logs, report.json, final/)", required=True, flag_values=fv
  )
  flags.DEFINE_bool(
    "distributed",
    False,
    "multi-host: jax.distributed.initialize() from the cluster's environment",
    flag_values=fv,
  )
  cli.define_training_flags(fv)


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  if args.config is None:
    print("error: --config is required, e.g. configs/cdrl_tiny.py", file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  trainer.initialize_distributed(args.distributed)
  try:
    trainer.train(
      args.config, pathlib.Path(args.out), rebuild=args.rebuild, override_resume=args.override_resume
    )
  except (runs.OutDirError, validate.ConfigError) as e:  # --out held or not writable; a bad setting
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(f"{e}; stopping", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
