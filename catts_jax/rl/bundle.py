"""The bundled checkpoints, rebuilt from scratch: a run's HF export copied with its record.

`rebuild` runs the two stages (each resumed when interrupted, skipped when its report exists)
and bundles each one's export:

1. SFT (rl.sft, configs/synthetic_tiny.py): a tiny Qwen2.5-VL made from scratch and trained on
   the synthetic reasoning solutions -> DEST/synthetic_sft.
2. CDRL (rl.trainer, configs/synthetic_tiny_cdrl.py) from that bundled checkpoint ->
   DEST/synthetic_cdrl.
3. The CA-TTS Expert (rl.expert_sft, configs/synthetic_expert.py), its Voter and Critic rows
   from that bundled CDRL policy's samples -> DEST/synthetic_expert.
"""

from __future__ import annotations

import json
import pathlib
import shutil

from catts_jax import runs
from catts_jax.rl import expert_sft, sft, trainer

# How each stage is run on its own; recorded in the bundle's training.json.
SFT_COMMAND = "python -m train.sft --config configs/synthetic_tiny.py"
CDRL_COMMAND = "python -m train.cdrl --config configs/synthetic_tiny_cdrl.py"
EXPERT_COMMAND = "python -m train.expert --config configs/synthetic_expert.py"


def bundle(run: pathlib.Path, dest: pathlib.Path, command: str) -> dict:
  """Copy a finished run's HF export (run/final) to `dest`, replacing what was there, with
  dest/training.json: `command` and the run's report (its final_checkpoint path left out).
  Returns the run's report."""
  summary = json.loads((run / "report.json").read_text())
  if dest.exists():
    shutil.rmtree(dest)
  shutil.copytree(run / "final", dest)
  summary.pop("final_checkpoint", None)  # the run's path, not the bundle's
  runs.write_json(dest / "training.json", {"command": command, **summary})
  return summary


def rebuild(
  sft_cfg, cdrl_cfg, expert_cfg, runs_dir: pathlib.Path, dest: pathlib.Path, data_dir: str | None
) -> tuple[dict, dict, dict]:
  """Train (or resume, or skip when done) the SFT run of `sft_cfg` in runs_dir/synthetic_sft,
  the CDRL run of `cdrl_cfg` from its bundled export in runs_dir/synthetic_cdrl and the Expert
  of `expert_cfg` on that CDRL policy's samples in runs_dir/synthetic_expert; bundle each into
  dest/. Returns the three runs' reports. A stage stopped by a non-finite loss raises
  FloatingPointError naming the stage."""
  stages = (
    ("SFT", "synthetic_sft", sft_cfg, sft.train, SFT_COMMAND),
    ("CDRL", "synthetic_cdrl", cdrl_cfg, trainer.train, CDRL_COMMAND),
    ("Expert", "synthetic_expert", expert_cfg, expert_sft.train, EXPERT_COMMAND),
  )
  cdrl_cfg.model.ckpt = str(dest / "synthetic_sft")
  expert_cfg.policy.ckpt = str(dest / "synthetic_cdrl")
  summaries = []
  for stage, name, cfg, train, command in stages:
    cfg.data.data_dir = data_dir
    if not (runs_dir / name / "report.json").is_file():
      try:
        train(cfg, runs_dir / name)
      except FloatingPointError as e:
        raise FloatingPointError(f"{stage} stopped: {e}") from e
    summaries.append(bundle(runs_dir / name, dest / name, command))
  return summaries[0], summaries[1], summaries[2]
