"""CDRL for Qwen2.5-VL, paper-like settings: `--config configs/cdrl_qwen2_5_vl.py:7b,v5p-8`.

Model size 3b, 7b or 72b (1.5b and small are benchmark shapes with random weights, see
`train.bench`), a name of catts_jax/models/qwen2_5_vl/presets.py; hardware preset (Cloud TPU
names count TensorCores for v4/v5p, chips for v5e/v6e):
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

from configs.cdrl_tiny import base_config

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
MICRO_BATCH = {"v5p-8": 64, "v5e-16": 16}  # train rows per micro-batch that fit the 7B step (plans)
CHIPS = {"v5p-8": 4, "v5p-16": 8, "v5p-128": 64, "v5e-16": 16, "v6e-16": 16, "v4-8": 4, "gpu-8": 8}

SIZES = ("3b", "7b", "72b", "1.5b", "small")  # presets.hf_config names


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
  # Four length buckets per octave: a 512-token prompt + 2048-token response pads to 2560
  # tokens, not 4096 (attention's work and memory grow with its square).
  c.model.buckets_per_octave = 4
  c.mesh = MESHES[hardware]
  c.topology = TOPOLOGIES.get(hardware, "")
  c.rollout.group_size = 8
  c.rollout.max_new_tokens = 2048
  c.optimizer.learning_rate = 1e-6
  c.loss.kl_coef = 1e-2
  c.train.prompts_per_step = {"3b": 32, "7b": 16}.get(size, 16)
  # FSDP regathers the weights for every micro-batch: as many rows as fit (docs/sharding.md).
  c.train.micro_batch = MICRO_BATCH.get(hardware, max(16, CHIPS.get(hardware, 1)))
  return c
