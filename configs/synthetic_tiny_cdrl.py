"""CDRL on the bundled SFT checkpoint, synthetic reasoning tasks, CPU, <= 10 minutes:
`python -m train.cdrl --config configs/synthetic_tiny_cdrl.py --out runs/synthetic_cdrl`
(`make checkpoints` runs it after train.sft and bundles the result).

The perturbation is VCD's diffusion noise at full strength (the image is gone), the one the
demo measures the confidence drop under; the paper's reward weights (accuracy 1, sensitivity
0.5, calibration 0.5); KL 0.1, not the paper's 0.01; and a supervised anchor on the reference
solutions (`loss.sft_coef` 5, not in the paper) with lr 1e-4 and 15 problems a step (240
sampled rows and 15 solutions fill the 256-row bucket). The bundled SFT it starts from is the
800-step one. Why each setting, and the runs that chose them: docs/experiments/synthetic_cdrl.md.
"""

from __future__ import annotations

import ml_collections

from configs import cdrl_tiny


def get_config() -> ml_collections.ConfigDict:
  c = cdrl_tiny.base_config()
  c.model.update(ckpt="checkpoints/synthetic_sft", dtype="float32", buckets_per_octave=4)
  c.data.update(benchmark="synthetic", config="reasoning", split="train")
  c.rollout.update(
    group_size=8,
    max_new_tokens=64,
    perturbation="vcd_noise",
    strength=1.0,
    targeted=False,
    advantage="dr_grpo",
    confidence_gradient=True,
  )
  c.loss.update(kl_coef=0.1, sft_coef=5.0)
  c.optimizer.update(learning_rate=1e-4, warmup_steps=5, total_steps=1000, weight_decay=0.0)
  c.mesh = dict(data=1, fsdp=1, tensor=1)
  c.train.update(steps=50, prompts_per_step=15, save_every=10, keep=2)
  return c
