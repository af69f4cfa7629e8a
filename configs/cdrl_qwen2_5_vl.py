"""CDRL for Qwen2.5-VL, paper-like settings: `--config configs/cdrl_qwen2_5_vl.py:7b,v5p-8`.

Model size 3b or 7b; hardware preset:
- v5p-8: 4 chips (95 GiB HBM each), fsdp over all of them;
- v5e-16: 16 chips (16 GiB HBM each), fsdp=8 x tensor=2 so the 7B optimizer state fits;
- gpu-8: one host with 8 GPUs, fsdp over all of them.
`--config.model.ckpt` must point at the downloaded HF checkpoint directory.
"""

from __future__ import annotations

from configs.cdrl_tiny import base_config

MESHES = {
  "v5p-8": dict(data=1, fsdp=-1, tensor=1),
  "v5e-16": dict(data=1, fsdp=-1, tensor=2),
  "gpu-8": dict(data=1, fsdp=-1, tensor=1),
}


def get_config(spec: str = "7b,gpu-8"):
  size, hardware = spec.split(",")
  if size not in ("3b", "7b") or hardware not in MESHES:
    raise ValueError(f"spec {spec!r}: expected '<3b|7b>,<{'|'.join(MESHES)}>'")
  c = base_config()
  c.model.ckpt = f"Qwen/Qwen2.5-VL-{size.upper()}-Instruct"  # replace with the local directory
  c.mesh = MESHES[hardware]
  c.rollout.group_size = 8
  c.rollout.max_new_tokens = 2048
  c.optimizer.learning_rate = 1e-6
  c.loss.kl_coef = 1e-2
  c.train.prompts_per_step = 16 if size == "7b" else 32
  return c
