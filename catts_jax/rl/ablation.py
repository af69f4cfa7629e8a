"""The CDRL learning check and ablation, in one run on CPU (`train.ablation` runs it).

1. A tiny Qwen2.5-VL is made from scratch and given a few supervised steps on the toy task
   (rl.sft): it learns the answer format, its accuracy stays near chance.
2. From that checkpoint, one RL run per arm with the same seeds and problems (rl.trainer):
   `cdrl` (accuracy + perceptual sensitivity + calibration rewards) and `accuracy`
   (accuracy-only GRPO).
3. Before (the warm start) and after each arm, greedy answers on the test split are graded
   and each answer is scored on its original and on a perturbed image.

out/report.json holds the reward curves, the before/after table and the confidence-drop
ratio of the arms; `markdown` renders the README's table from it. Each stage resumes: a
finished stage is skipped, an interrupted RL run continues from its checkpoint.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from catts_jax import data, runs
from catts_jax.eval import greedy, report
from catts_jax.eval.metrics import drop_ratio
from catts_jax.policy import Policy
from catts_jax.rl import sft, trainer, validate


def evaluate(path: pathlib.Path, cfg) -> dict:
  """Greedy answers of the checkpoint at `path` on `cfg.eval`'s problems, graded, scored on
  the original and a perturbed image, with accuracy per answer."""
  e = cfg.eval
  policy = Policy.from_pretrained(path)
  ds = data.load(cfg.sft.data.benchmark, config=cfg.sft.data.config, split=e.split, data_dir=cfg.data_dir)
  examples = ds[: min(len(ds), e.size)]
  rows = greedy.greedy_eval(
    policy,
    examples,
    cfg.sft.data.benchmark,
    max_new_tokens=e.max_new_tokens,
    perturbation=(e.perturbation, e.strength),
  )
  by_answer = {}
  for ex, row in zip(examples, rows):
    by_answer.setdefault(ex["answer"], []).append(row["correct"])
  return {
    **greedy.summary(rows),
    "accuracy_by_answer": {a: float(np.mean(c)) for a, c in sorted(by_answer.items())},
  }


def curve(rows: list[dict], key: str = "reward_accuracy", every: int = 10) -> list[float]:
  """Means of `key` over consecutive blocks of `every` rows (steps) of a train.jsonl."""
  values = [row[key] for row in rows]
  return [float(np.mean(values[i : i + every])) for i in range(0, len(values), every)]


def run(cfg, out: pathlib.Path) -> dict:
  """All stages of `cfg` (configs/ablation_colour.py) into `out`, each resumed or skipped
  when done; the result written to out/report.json. An arm stopped by a non-finite loss
  raises FloatingPointError."""
  # Both stages' settings checked before the first one runs (each checks its own again).
  validate.check(cfg.sft, "sft", jax.device_count())
  validate.check(cfg.rl, "cdrl", jax.device_count())
  out.mkdir(parents=True, exist_ok=True)
  sft_cfg = cfg.sft
  sft_cfg.data.data_dir = cfg.data_dir
  if not (out / "sft" / "report.json").is_file():
    sft.train(sft_cfg, out / "sft")
  sft_report = json.loads((out / "sft" / "report.json").read_text())
  warm = out / "sft" / "final"
  result = {"sft": {k: sft_report[k] for k in ("steps", "eval", "seconds")}, "before": evaluate(warm, cfg)}

  result["arms"] = {}
  for name, weights in cfg.arms.items():
    arm_cfg = cfg.rl.copy_and_resolve_references()
    arm_cfg.model.ckpt = str(warm)
    arm_cfg.data.data_dir = cfg.data_dir
    arm_cfg.rollout.reward_weights = dict(weights)
    run_dir = out / name
    if not (run_dir / "report.json").is_file():
      trainer.train(arm_cfg, run_dir)
    rows = runs.read_rows(run_dir / "train.jsonl")
    acc = curve(rows)
    result["arms"][name] = {
      "reward_weights": dict(weights),
      "steps": len(rows),
      "seconds": float(sum(r["seconds"] for r in rows)),
      "accuracy_reward_first10": acc[0],
      "accuracy_reward_last10": acc[-1],
      "accuracy_reward_curve": acc,
      "after": evaluate(run_dir / "final", cfg),
    }
  drops = {name: arm["after"]["confidence_drop"] for name, arm in result["arms"].items()}
  result["drop_ratio_cdrl_vs_accuracy"] = drop_ratio(drops["cdrl"], drops["accuracy"])
  result["drop_ratio_cdrl_vs_before"] = drop_ratio(drops["cdrl"], result["before"]["confidence_drop"])
  result["config"] = cfg.to_dict()
  runs.write_json(out / "report.json", result)
  return result


def markdown(result: dict) -> str:
  """The README's table of a report.json: before/after per arm, curves, accuracy by answer,
  drop ratios."""
  rows = [{"model": "warm start (SFT)", **result["before"]}]
  for name, arm in result["arms"].items():
    rows.append({"model": f"after RL: {name}", **arm["after"]})
  cols = ["model", "accuracy", "confidence", "confidence_perturbed", "confidence_drop"]
  curves = "\n".join(
    f"- {name}: accuracy reward per 10 steps "
    + " ".join(f"{v:.2f}" for v in arm["accuracy_reward_curve"])
    + f" ({arm['steps']} steps, {arm['seconds']:.0f} s)"
    for name, arm in result["arms"].items()
  )
  by_answer = "\n".join(
    f"- {row['model']}: accuracy by answer "
    + ", ".join(f"{a} {v:.2f}" for a, v in row.get("accuracy_by_answer", {}).items())
    for row in rows
  )
  return (
    report.markdown_table(rows, cols)
    + f"\n\n{curves}\n{by_answer}\n\nConfidence drop under noise, CDRL / accuracy-only: "
    + f"{result['drop_ratio_cdrl_vs_accuracy']:.1f}x; CDRL / warm start: {result['drop_ratio_cdrl_vs_before']:.1f}x."
  )
