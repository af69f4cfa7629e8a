"""CDRL for Qwen2.5-VL, paper-like settings: `--config configs/cdrl_qwen2_5_vl.py:7b,v5p-8`.

Model size 3b, 7b or 72b (1.5b and tiny are benchmark shapes with random weights, see
`train.bench`); hardware preset (Cloud TPU names count TensorCores for v4/v5p, chips for
v5e/v6e):
- v5p-8: 4 chips (95 GiB HBM each), fsdp over all of them;
- v5p-16: 8 chips, fsdp; v5p-128: 64 chips, fsdp (the 72B);
- v5e-16: 16 chips (16 GiB HBM each), fsdp=8 x tensor=2 so the 7B optimizer state fits;
- v6e-16: 16 chips (32 GiB each), fsdp; v4-8: 4 chips (32 GiB each), fsdp;
- gpu-8: one host with 8 GPUs, fsdp over all of them; gpu-1 and cpu: one device.
`--config.model.ckpt` must point at the downloaded HF checkpoint directory. `c.topology` is
the TPU topology that `train.compile` plans for by default; `STRATEGIES` are the meshes its
`--strategy` names (one rules table serves them all: see catts_jax/sharding.py).
"""

from __future__ import annotations

import copy

from configs.cdrl_tiny import base_config
from configs.qwen2_5_vl import HF_CONFIGS as RELEASED

MESHES = {
  "v5p-8": dict(data=1, fsdp=-1, tensor=1),
  "v5p-16": dict(data=1, fsdp=-1, tensor=1),
  "v5p-128": dict(data=1, fsdp=-1, tensor=1),
  "v5e-16": dict(data=1, fsdp=-1, tensor=2),
  "v6e-16": dict(data=1, fsdp=-1, tensor=1),
  "v4-8": dict(data=1, fsdp=-1, tensor=1),
  "gpu-8": dict(data=1, fsdp=-1, tensor=1),
  "gpu-1": dict(data=1, fsdp=1, tensor=1),
  "cpu": dict(data=1, fsdp=1, tensor=1),
}

# `jax.experimental.topologies` names of the TPU presets (what `train.compile` compiles for).
TOPOLOGIES = {
  "v5p-8": "v5p:2x2x1",
  "v5p-16": "v5p:2x2x2",
  "v5p-128": "v5p:4x4x4",
  "v5e-16": "v5e:4x4",
  "v6e-16": "v6e:4x4",
  "v4-8": "v4:2x2x1",
}

# Sharding strategies as meshes; -1 takes the devices left over. Tensor parallelism splits
# heads and MLP hidden (a dim the axis does not divide is replicated, e.g. the 7B's 28 heads
# on tensor=8); FSDP shards every matrix's model dim; the batch goes over data x fsdp.
STRATEGIES = {
  "dp": dict(data=-1, fsdp=1, tensor=1),
  "fsdp": dict(data=1, fsdp=-1, tensor=1),
  "fsdp_tp": dict(data=1, fsdp=-1, tensor=4),
  "tp": dict(data=1, fsdp=1, tensor=-1),
}

_TEXT_1_5B = dict(
  hidden_size=1536,
  intermediate_size=8960,
  num_hidden_layers=28,
  num_attention_heads=12,
  num_key_value_heads=2,
  vocab_size=151936,
  tie_word_embeddings=True,
)
_TINY = dict(
  hidden_size=256,
  intermediate_size=704,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  vocab_size=4096,
  tie_word_embeddings=False,
)


def _shaped(text: dict, vision: dict) -> dict:
  """A released config with other text (and vision) sizes: same tokens, rope, layout."""
  d = copy.deepcopy(RELEASED["3b"])
  d.update(text)
  d["vision_config"].update(vision, out_hidden_size=text["hidden_size"])
  d["rope_scaling"]["mrope_section"] = _mrope(text["hidden_size"] // text["num_attention_heads"])
  return d


def _mrope(head_dim: int) -> list[int]:
  """Qwen's [16, 24, 24] split of head_dim / 2 = 64, scaled to other head sizes."""
  half = head_dim // 2
  t = half // 4
  return [t, (half - t) // 2, half - t - (half - t) // 2]


def _tiny() -> dict:
  d = _shaped(
    _TINY, dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, fullatt_block_indexes=[1])
  )
  v = d["vocab_size"]  # special tokens inside the small vocabulary
  d.update(
    bos_token_id=v - 7,
    eos_token_id=v - 6,
    vision_start_token_id=v - 4,
    vision_end_token_id=v - 3,
    vision_token_id=v - 5,
    image_token_id=v - 2,
    video_token_id=v - 1,
  )
  return d


# HF config.json dicts of every size a config can name: the released ones, plus a
# 1.5B-shaped (Qwen2.5-1.5B text, full Qwen2.5-VL vision tower) and a tiny one for benches.
HF_CONFIGS = {**RELEASED, "1.5b": _shaped(_TEXT_1_5B, {}), "tiny": _tiny()}
SIZES = ("3b", "7b", "72b", "1.5b", "tiny")


def get_config(spec: str = "7b,gpu-8"):
  size, hardware = spec.split(",")
  if size not in SIZES or hardware not in MESHES:
    raise ValueError(f"spec {spec!r}: expected '<{'|'.join(SIZES)}>,<{'|'.join(MESHES)}>'")
  c = base_config()
  c.model.ckpt = f"Qwen/Qwen2.5-VL-{size.upper()}-Instruct"  # replace with the local directory
  # The architecture by name, for work without weights (train.compile, train.bench).
  c.model.preset = size
  c.model.param_dtype = "float32"  # master weights and Adam moments
  # Recompute each decoder layer in the backward pass: the train step's activations are
  # otherwise ~num_layers x larger (see docs/sharding.md).
  c.model.remat = True
  # Image resizing bounds for training, as image tokens x 28 x 28 pixels (Qwen's own default
  # reaches 1280 tokens): 64 to 256 tokens (a 448x448 image: 1024 patches) per image and row.
  c.model.min_pixels = 64 * 28 * 28
  c.model.max_pixels = 256 * 28 * 28
  c.mesh = MESHES[hardware]
  c.topology = TOPOLOGIES.get(hardware, "")
  c.rollout.group_size = 8
  c.rollout.max_new_tokens = 2048
  c.optimizer.learning_rate = 1e-6
  c.loss.kl_coef = 1e-2
  c.train.prompts_per_step = {"3b": 32, "7b": 16}.get(size, 16)
  return c
