"""Rebuild the bundled checkpoints from scratch: `python -m train.bundle [--runs runs] [--dest checkpoints]`.

1. SFT (`python -m train.sft --config configs/synthetic_tiny.py`): a tiny Qwen2.5-VL made from
   scratch (tokenizer trained on the task text, seeded init) and trained on the synthetic
   reasoning solutions -> DEST/synthetic_sft.
2. CDRL (`python -m train.cdrl --config configs/synthetic_tiny_cdrl.py`) from that checkpoint
   -> DEST/synthetic_cdrl.
3. The CA-TTS Expert (`python -m train.expert --config configs/synthetic_expert.py`), its
   Voter and Critic rows from that CDRL policy's samples -> DEST/synthetic_expert.

Each bundled directory is the run's HF export plus training.json: the command, the full
config (seeds included), the wall time and the run's report (catts_jax/rl/bundle.py). The
runs live in RUNS/ and resume when interrupted; a stage whose report exists is not rerun. A
non-finite loss stops the rebuild with exit code 3.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags, logging

from catts_jax import cli, runs
from catts_jax.rl import bundle
from configs import synthetic_expert, synthetic_tiny, synthetic_tiny_cdrl


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("runs", "runs", "where the training runs write (resumable)", flag_values=fv)
  flags.DEFINE_string("dest", "checkpoints", "where the bundled HF directories go", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "tfds cache for the synthetic dataset", flag_values=fv)


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  logging.set_verbosity(logging.WARNING)
  dest = pathlib.Path(args.dest)
  try:
    sft_summary, cdrl_summary, expert_summary = bundle.rebuild(
      synthetic_tiny.get_config(),
      synthetic_tiny_cdrl.get_config(),
      synthetic_expert.get_config(),
      pathlib.Path(args.runs),
      dest,
      args.data_dir,
    )
  except runs.OutDirError as e:  # a run directory under --runs held by another run, or not writable
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(e, file=sys.stderr)
    return 3
  print(
    f"SFT {sft_summary['seconds']:.0f} s (greedy accuracy {sft_summary['eval']['accuracy']:.3f} on the first "
    f"{sft_summary['eval']['n']} test problems), "
    f"CDRL {cdrl_summary['seconds']:.0f} s, Expert {expert_summary['seconds']['total']:.0f} s; bundled in {dest}/"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
