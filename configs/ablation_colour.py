"""The CDRL learning check and ablation on the toy colour task (CPU, minutes):
`python -m train.ablation --config configs/ablation_colour.py --out docs/reports/ablation_colour`.

Warm start: a from-scratch tiny model, 30 supervised steps (the answer format; accuracy near
chance). Then two RL arms from it with the same seeds and problems: CDRL (accuracy +
perceptual sensitivity + calibration) and accuracy-only GRPO. The perturbation is VCD's
diffusion noise at full strength (the image is gone), in training and in the evaluation.
"""

from __future__ import annotations

import ml_collections

from configs import cdrl_tiny, synthetic_tiny


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data_dir = ""  # tfds cache; empty = ~/tensorflow_datasets

  c.sft = synthetic_tiny.get_config("colour")
  c.sft.train.steps = c.sft.optimizer.total_steps = 30

  rl = cdrl_tiny.get_config()
  rl.data.benchmark, rl.data.config, rl.data.split = "synthetic", "colour", "train"
  rl.rollout.group_size = 8
  rl.rollout.max_new_tokens = 24
  rl.rollout.perturbation, rl.rollout.strength = "vcd_noise", 1.0
  # The confidence rewards' own gradient (catts_jax/rl/rollout.py); nothing for the
  # accuracy-only arm, which has no confidence reward. From step 50, once the policy has
  # begun to see: lowering conf(y|x_noisy) means nothing before (from step 0, CDRL never
  # learned one colour; accuracy-only GRPO can lose one too, see the README).
  rl.rollout.confidence_gradient = True
  rl.rollout.confidence_gradient_from = 50
  # Calibrate the answer's confidence, not the whole response's: from a chance-level start the
  # calibration reward pays for low confidence, and on the whole response the policy can get
  # it by garbling its text, which stopped it exploring one colour (README).
  rl.rollout.calibration_span = "answer"
  rl.loss.kl_coef = 0.0  # a toy from a barely trained start: nothing to stay close to
  rl.optimizer.update(learning_rate=5e-4, warmup_steps=5, total_steps=1000)
  rl.train.update(steps=150, prompts_per_step=32, save_every=50, keep=2)
  c.rl = rl

  c.arms = {
    "cdrl": {"accuracy": 1.0, "sensitivity": 0.5, "calibration": 0.5},
    "accuracy": {"accuracy": 1.0},
  }
  c.eval = dict(split="test", size=256, max_new_tokens=24, perturbation="vcd_noise", strength=1.0)
  return c
