"""Rebuild the bundled checkpoints from scratch: `python -m train.bundle [--runs runs] [--dest checkpoints]`.

1. `python -m train.sft --config configs/synthetic_tiny.py`: a tiny Qwen2.5-VL made from
   scratch (tokenizer trained on the task text, seeded init) and trained on the synthetic
   reasoning solutions -> DEST/synthetic_sft.
2. `python -m train.cdrl --config configs/synthetic_tiny_cdrl.py`: CDRL from that checkpoint
   -> DEST/synthetic_cdrl.

Each bundled directory is the run's HF export plus training.json: the command, the full
config (seeds included), the wall time and the run's report. The runs live in RUNS/ and
resume when interrupted; a stage whose report exists is not rerun.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

from catts_jax.eval import report
from configs import synthetic_tiny, synthetic_tiny_cdrl
from train import cdrl, sft


def bundle(run: pathlib.Path, dest: pathlib.Path, command: str) -> dict:
  """Copy run/final to dest with training.json; returns the run's report."""
  summary = json.loads((run / "report.json").read_text())
  if dest.exists():
    shutil.rmtree(dest)
  shutil.copytree(run / "final", dest)
  summary.pop("final_checkpoint", None)  # the run's path, not the bundle's
  report.write_json(dest / "training.json", {"command": command, **summary})
  return summary


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--runs", default="runs", help="where the training runs write (resumable)")
  p.add_argument("--dest", default="checkpoints", help="where the bundled HF directories go")
  p.add_argument("--data-dir", default=None, help="tfds cache for the synthetic dataset")
  args = p.parse_args(argv)
  runs, dest = pathlib.Path(args.runs), pathlib.Path(args.dest)

  cfg = synthetic_tiny.get_config()
  cfg.data.data_dir = args.data_dir
  if not (runs / "synthetic_sft" / "report.json").is_file():
    sft.train(cfg, runs / "synthetic_sft")
  sft_summary = bundle(
    runs / "synthetic_sft", dest / "synthetic_sft", "python -m train.sft --config configs/synthetic_tiny.py"
  )

  cfg = synthetic_tiny_cdrl.get_config()
  cfg.model.ckpt = str(dest / "synthetic_sft")
  cfg.data.data_dir = args.data_dir
  if (
    not (runs / "synthetic_cdrl" / "report.json").is_file() and cdrl.train(cfg, runs / "synthetic_cdrl") != 0
  ):
    print(f"CDRL stopped (see {runs / 'synthetic_cdrl' / 'train.jsonl'})", file=sys.stderr)
    return 3
  cdrl_summary = bundle(
    runs / "synthetic_cdrl",
    dest / "synthetic_cdrl",
    "python -m train.cdrl --config configs/synthetic_tiny_cdrl.py",
  )
  print(
    f"SFT {sft_summary['seconds']:.0f} s (greedy accuracy {sft_summary['eval']['accuracy']:.3f} on the first "
    f"{sft_summary['eval']['n']} test problems), "
    f"CDRL {cdrl_summary['seconds']:.0f} s; bundled in {dest}/"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
