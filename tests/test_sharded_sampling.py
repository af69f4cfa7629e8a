"""The sampler with its rows sharded: on 8 simulated devices, the same tokens, log-probs and
confidences as on one device for a fixed key, and each device does 1/8 of the work."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_hf import random_image

from catts_jax import sharding
from catts_jax.models.qwen2_5_vl import ModelConfig, load_hf
from catts_jax.processing import Processor
from catts_jax.sampling import Sampler, SamplingConfig, carry_shardings, cast_state

MESHES = [{"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 8}]
CFG = SamplingConfig(max_new_tokens=6, n=2, temperature=1.0, stop_ids=())


@pytest.fixture(scope="module")
def batch(tiny_ckpt):
  """8 prompts (4 with an image, 4 text only) -> 16 sample rows."""
  processor = Processor(tiny_ckpt)
  rng = np.random.default_rng(0)
  prompts = [processor.chat_prompt(f"question {i} " * (1 + i % 3), i % 2) for i in range(8)]
  images = [[random_image(rng, 56 + 28 * (i % 3), 56)] if i % 2 else [] for i in range(8)]
  return processor(prompts, images)


@pytest.fixture(scope="module")
def single(tiny_ckpt, batch):
  return Sampler(load_hf(tiny_ckpt)), Sampler(load_hf(tiny_ckpt))(batch, CFG, jax.random.key(3))


def assert_same_samples(got, want):
  """The same tokens and lengths; log-probs and scores to float32 rounding."""
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.lengths, want.lengths)
  np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
  np.testing.assert_allclose(got.topk_logprobs, want.topk_logprobs, atol=1e-5)
  for name in want.scores:
    np.testing.assert_allclose(got.scores[name], want.scores[name], atol=1e-5, err_msg=name)


@pytest.mark.parametrize("shape", MESHES, ids=["data2_fsdp2_tensor2", "fsdp8"])
def test_sharded_sampling_equals_one_device(tiny_ckpt, batch, single, shape):
  mesh = sharding.make_mesh(shape)
  sampler = Sampler(load_hf(tiny_ckpt, mesh=mesh), mesh=mesh)
  got = sampler(batch, CFG, jax.random.key(3))
  want = single[1]
  assert_same_samples(got, want)


@pytest.mark.parametrize("share_prompt", [False, True])
def test_sharded_growing_cache_equals_one_device_full_cache(tiny_ckpt, batch, single, share_prompt):
  """grow_cache on 8 devices (fsdp 8), the cache grown once, with each prompt's KV repeated per
  row or shared by its rows: every row's samples equal one device's with the whole cache from
  the start, repeated."""
  prompt_slots = batch.input_ids.shape[1]
  new = (1 << prompt_slots.bit_length()) - prompt_slots + 4  # the cache must grow once
  cfg = dataclasses.replace(CFG, max_new_tokens=new)
  want = single[0](batch, cfg, jax.random.key(3))
  mesh = sharding.make_mesh({"fsdp": 8})
  sampler = Sampler(load_hf(tiny_ckpt, mesh=mesh), mesh=mesh)
  grows = sampler._grow_jit._cache_size()  # shared by the samplers of this architecture
  got = sampler(
    batch, dataclasses.replace(cfg, grow_cache=True, share_prompt=share_prompt), jax.random.key(3)
  )
  assert sampler._grow_jit._cache_size() - grows == 1
  assert_same_samples(got, want)


def _decode_flops(sampler, batch) -> float:
  """Per-device FLOPs of the compiled decode loop for `batch`, its carry laid out as the
  sampler lays it out."""
  cache_len = batch.input_ids.shape[1] + CFG.max_new_tokens
  with sampler._mesh():
    logits, cache = sampler._prefill(
      sampler.state, sampler._inputs(batch, sampler.state), cache_len=cache_len
    )
  next_pos = np.zeros(batch.input_ids.shape[0], np.int32)
  carry = sampler._start(cache, logits, next_pos, batch.num_rows, CFG, jax.random.key(0), 1)
  return sampler.lower_decode(sampler.state, carry, CFG).compile().cost_analysis()["flops"]


def test_sharded_decode_does_an_eighth_of_the_work(tiny_ckpt, batch, single):
  """No replicated rows: per-device FLOPs of the decode loop within 1.3x of 1 device / 8."""
  one = _decode_flops(single[0], batch)
  for shape in MESHES:
    mesh = sharding.make_mesh(shape)
    sampler = Sampler(load_hf(tiny_ckpt, mesh=mesh), mesh=mesh)
    ratio = _decode_flops(sampler, batch) / (one / 8)
    assert ratio <= 1.3, (shape, ratio)


def test_kv_cache_layout_is_stated():
  """K/V: rows over data x fsdp and KV heads over tensor; the step and key replicated."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  carry = {
    "cache": {
      "layers": [{"k": np.zeros((8, 2, 4, 16)), "v": np.zeros((8, 2, 16, 4))}],
      "valid": np.zeros((8, 16)),
    },
    "tokens": np.zeros((8, 6)),
    "step": np.zeros(()),
  }
  s = carry_shardings(carry, mesh)
  P = jax.sharding.PartitionSpec
  assert s["cache"]["layers"][0]["k"].spec == P(("data", "fsdp"), "tensor", None, None)
  assert s["cache"]["valid"].spec == P(("data", "fsdp"), None)
  assert s["tokens"].spec == P(("data", "fsdp"), None) and s["step"].spec == P()


def test_cast_state_gives_the_same_tokens(tiny_ckpt, batch):
  """bf16 compute: decoding from weights cast once equals decoding from fp32 weights (every
  layer casts its weights to the compute dtype at use)."""
  model = load_hf(tiny_ckpt, ModelConfig.from_pretrained(tiny_ckpt).replace(dtype="bfloat16"))
  sampler = Sampler(model)
  cast = cast_state(sampler.state, "bfloat16")
  assert {x.dtype for x in jax.tree.leaves(cast) if jnp.issubdtype(x.dtype, jnp.floating)} == {
    jnp.dtype("bfloat16")
  }
  a = sampler(batch, CFG, jax.random.key(1))
  b = sampler(batch, CFG, jax.random.key(1), state=cast)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
