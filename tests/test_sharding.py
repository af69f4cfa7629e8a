"""The model under an 8-device simulated CPU mesh equals the single-device model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from catts_jax import sharding
from catts_jax.models.qwen2_5_vl import load_hf
from catts_jax.processing import Processor
from catts_jax.verify import make_cases


def forward(model, batch):
  inputs = {k: jnp.asarray(v) for k, v in batch.model_inputs().items()}
  logits, _ = nnx.jit(lambda m, x: m(**x))(model, inputs)
  return np.asarray(logits)


def test_logical_to_spec_rules():
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  assert mesh.shape == {"data": 1, "fsdp": 4, "tensor": 2}
  assert sharding.logical_to_spec(("embed", "q_heads", "head_dim"), (64, 4, 16), mesh) == P(
    "fsdp", "tensor", None
  )
  assert sharding.logical_to_spec(("vocab", "embed"), (576, 64), mesh) == P("tensor", "fsdp")
  # 1 KV head cannot be split over tensor=2: replicated on that dim, not an error.
  assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 1, 128), mesh) == P(
    "fsdp", None, None
  )
  # A mesh axis is used once per array.
  assert sharding.logical_to_spec(("mlp", "mlp"), (8, 8), mesh) == P("tensor", None)
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 2})


@pytest.mark.parametrize("ckpt", ["tiny_ckpt", "seven_b_ckpt"])
def test_sharded_forward_equals_single_device(ckpt, request):
  path = request.getfixturevalue(ckpt)
  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  single = load_hf(path)
  sharded = load_hf(path, mesh=mesh)

  # Params really are distributed: specs follow the rules and each device holds a slice.
  # Decoder layers are stacked on a leading, unsharded "layers" axis.
  attn = sharded.language_model.layers.self_attn
  q = attn.q_proj.kernel.get_value()
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 4, q.shape[2] // 2, q.shape[3])
  up = sharded.language_model.layers.mlp.up_proj.kernel.get_value()
  assert up.sharding.spec == P(None, "fsdp", "tensor")
  qkv = sharded.visual.blocks.attn.qkv.kernel.get_value()  # vision blocks likewise
  assert qkv.sharding.spec == P(None, "fsdp", None, "tensor", None)
  n_sharded = sum(1 for _, v in nnx.to_flat_state(nnx.state(sharded)) if any(v.get_value().sharding.spec))
  n_total = len(nnx.to_flat_state(nnx.state(sharded)))
  assert n_sharded > n_total // 2, (n_sharded, n_total)

  processor = Processor(path)
  prompts, images = make_cases(processor)["padded_batch"]
  batch = processor(prompts, images)
  a, b = forward(single, batch), forward(sharded, batch)
  valid = batch.attention_mask.astype(bool)
  assert np.abs(a[valid] - b[valid]).max() <= 1e-5


def test_shard_model_places_params():
  from catts_jax.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL, presets

  cfg = ModelConfig.from_hf_dict(presets.hf_config("7b"))
  # Shrink depth/width but keep the 7B head layout (28 q heads, 4 kv heads).
  small = cfg.replace(
    text=dataclasses.replace(
      cfg.text,
      num_layers=1,
      hidden_size=28 * 8,
      intermediate_size=64,
      vocab_size=256,
      mrope_section=(1, 1, 2),
    ),
    vision=dataclasses.replace(
      cfg.vision, depth=1, hidden_size=32, num_heads=2, intermediate_size=32, out_hidden_size=28 * 8
    ),
  )
  model = Qwen2_5_VL(small, rngs=nnx.Rngs(0))
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  sharding.shard_model(model, mesh)
  k = model.language_model.layers.self_attn.k_proj.kernel.get_value()
  assert k.sharding.spec == P(None, "fsdp", "tensor", None)  # 4 kv heads over tensor=4
  assert k.addressable_shards[0].data.shape == (k.shape[0], 28 * 8 // 2, 1, 8)


def test_platform_is_the_meshs_devices_or_the_default_backend():
  """The platform a program compiles for: without a mesh jax's default backend, with one its
  devices' (a plan's compile-only TPUs where libtpu is installed)."""
  assert sharding.platform(None) == jax.default_backend()
  assert sharding.platform(sharding.make_mesh({"data": 1, "fsdp": -1})) == "cpu"
  from catts_jax.aot import devices

  tpus, backend = devices.topology_devices("v5e:2x2")
  if not backend.startswith("tpu"):
    pytest.skip(f"no compile-only TPUs: {backend}")
  assert sharding.platform(devices.build_mesh({"fsdp": -1}, tpus, tpu=True)) == "tpu"
