"""Model-level behaviour beyond parity: bf16 compute, rope index, KV cache, config reading."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from catts_jax.models.qwen2_5_vl import ConfigError, ModelConfig, get_rope_index, init_cache, load_hf, presets
from catts_jax.models.qwen2_5_vl.config import VisionConfig
from catts_jax.processing import Processor
from catts_jax.verify import make_cases


def logits_of(model, batch):
  inputs = {k: jnp.asarray(v) for k, v in batch.model_inputs().items()}
  return np.asarray(nnx.jit(lambda m, x: m(**x))(model, inputs)[0])


def test_bf16_compute_close_to_fp32(seven_b_ckpt):
  """bf16 activations and matmuls (params cast from fp32) against fp32.

  Measured on the 7B-shaped checkpoint (logit std ~1): max |logit diff| 0.069, mean 0.012,
  argmax agreement 98.1% over all real positions; the bounds below leave headroom for other
  CPUs and XLA versions.
  """
  fp32 = load_hf(seven_b_ckpt)
  bf16 = load_hf(seven_b_ckpt, ModelConfig.from_pretrained(seven_b_ckpt).replace(dtype="bfloat16"))
  assert bf16.language_model.layers.self_attn.q_proj.kernel.get_value().dtype == jnp.float32
  processor = Processor(seven_b_ckpt)
  prompts, images = make_cases(processor)["padded_batch"]
  batch = processor(prompts, images)
  valid = batch.attention_mask.astype(bool)
  a, b = logits_of(fp32, batch)[valid], logits_of(bf16, batch)[valid]
  diff = np.abs(a - b)
  agree = (a.argmax(-1) == b.argmax(-1)).mean()
  print(f"bf16 vs fp32: max {diff.max():.4f} mean {diff.mean():.4f} argmax agreement {agree:.3f}")
  assert 0 < diff.max() < 0.25
  assert diff.mean() < 0.03
  assert agree > 0.9


def hf_rope_index(path, ids, mask, grid):
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
  t = torch.from_numpy
  pos, deltas = model.model.get_rope_index(
    t(ids).long(),
    mm_token_type_ids=t((ids == model.config.image_token_id).astype(np.int64)),
    image_grid_thw=None if grid is None else t(np.asarray(grid)).long(),
    attention_mask=t(mask).long(),
  )
  return pos.numpy(), deltas.numpy().ravel()


def test_rope_index_matches_transformers(tiny_ckpt):
  """Host M-RoPE positions equal transformers' for left-padded mixes of text and images."""
  processor = Processor(tiny_ckpt)
  for name, (prompts, images) in make_cases(processor).items():
    batch = processor(prompts, images)
    if batch.image_grid_thw is None:
      continue
    n = batch.num_rows
    ids, mask = batch.input_ids[:n], batch.attention_mask[:n]
    ref_pos, ref_deltas = hf_rope_index(tiny_ckpt, ids, mask, batch.image_grid_thw)
    valid = mask.astype(bool)
    np.testing.assert_array_equal(batch.positions[:, :n][:, valid], ref_pos[:, valid], err_msg=name)
    np.testing.assert_array_equal(batch.rope_deltas[:n], ref_deltas, err_msg=name)


def test_rope_index_errors():
  img = 9
  ids = np.array([[1, img, img, img, img, 2]])
  mask = np.ones_like(ids)
  with pytest.raises(ValueError, match="row 0: more image tokens than images"):
    get_rope_index(ids, mask, None, image_token_id=img, spatial_merge_size=2)
  with pytest.raises(ValueError, match="row 0: more image tokens than images"):
    get_rope_index(
      np.array([[1] + [img] * 8 + [2]]),
      np.ones((1, 10)),
      np.array([[1, 4, 4]]),
      image_token_id=img,
      spatial_merge_size=2,
    )
  with pytest.raises(ValueError, match="2 images given but the prompts hold image tokens for 1"):
    get_rope_index(ids, mask, np.array([[1, 4, 4], [1, 2, 2]]), image_token_id=img, spatial_merge_size=2)
  ids = np.array([[0, 1, img, img, 2]])
  positions, deltas = get_rope_index(
    ids, np.array([[0, 1, 1, 1, 1]]), np.array([[1, 2, 4]]), image_token_id=img, spatial_merge_size=2
  )
  # Left pad -> 0; 1 text token; a 1x2 merged image at offset 1 (row 1, cols 1..2); text resumes
  # at 1 + max(1, 2) = 3.
  np.testing.assert_array_equal(positions[:, 0], [[0, 0, 1, 1, 3], [0, 0, 1, 1, 3], [0, 0, 1, 2, 3]])
  assert deltas.tolist() == [3 + 1 - 4]


def test_kv_cache_matches_full_forward(tiny_ckpt):
  """Prefill + one-token decode steps give the logits of one full forward over the sequence."""
  model = load_hf(tiny_ckpt)
  processor = Processor(tiny_ckpt)
  prompts, images = make_cases(processor)["padded_batch"]
  batch = processor(prompts, images)
  rng = np.random.default_rng(0)
  b, t = batch.input_ids.shape
  extra = rng.integers(0, 500, (b, 3)).astype(np.int32)
  nxt = batch.attention_mask.sum(1) + batch.rope_deltas
  extra_pos = np.broadcast_to(nxt[None, :, None] + np.arange(3), (3, b, 3)).astype(np.int32)

  full = dict(batch.model_inputs())
  full["input_ids"] = np.concatenate([batch.input_ids, extra], 1)
  full["attention_mask"] = np.concatenate([batch.attention_mask, np.ones((b, 3), np.int32)], 1)
  full["positions"] = np.concatenate([batch.positions, extra_pos], 2)
  full["image_index"] = np.concatenate([batch.image_index, np.zeros((b, 3), np.int32)], 1)
  ref = np.asarray(nnx.jit(lambda m, x: m(**x))(model, {k: jnp.asarray(v) for k, v in full.items()})[0])

  step = nnx.jit(lambda m, x, c: m(**x, cache=c))
  cache = init_cache(model.cfg.text, b, t + 8)
  logits, cache = step(model, {k: jnp.asarray(v) for k, v in batch.model_inputs().items()}, cache)
  got = [np.asarray(logits)]
  for i in range(3):
    x = dict(
      input_ids=extra[:, i : i + 1],
      positions=extra_pos[:, :, i : i + 1],
      attention_mask=np.ones((b, 1), np.int32),
    )
    logits, cache = step(model, {k: jnp.asarray(v) for k, v in x.items()}, cache)
    got.append(np.asarray(logits))
  got = np.concatenate(got, 1)
  valid = full["attention_mask"].astype(bool)
  assert int(cache["end_index"]) == t + 3
  assert np.abs(got[valid] - ref[valid]).max() <= 1e-5


# --- config ---------------------------------------------------------------------------------


def test_vision_defaults_match_transformers():
  """Missing vision_config fields fall back to transformers' Qwen2_5_VLVisionConfig defaults."""
  ref = transformers.Qwen2_5_VLVisionConfig()
  ours = VisionConfig()
  for field in (
    "depth",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "in_channels",
    "patch_size",
    "temporal_patch_size",
    "spatial_merge_size",
    "window_size",
    "out_hidden_size",
    "tokens_per_second",
  ):
    assert getattr(ours, field) == getattr(ref, field), field
  assert ours.fullatt_block_indexes == tuple(ref.fullatt_block_indexes)


def test_partial_hub_vision_config():
  """The hub's config.json lists only some vision fields; its hidden_size (1280) wins over the
  class default (3584), and what it leaves out comes from the defaults."""
  d = {
    **presets.hf_config("7b"),
    "vision_config": {"hidden_size": 1280, "out_hidden_size": 3584, "in_chans": 3},
  }
  cfg = ModelConfig.from_hf_dict(d)
  assert cfg.vision.hidden_size == 1280 and cfg.vision.head_dim == 80
  assert cfg.vision.depth == 32 and cfg.vision.window_size == 112
  assert cfg.vision.fullatt_block_indexes == (7, 15, 23, 31)
  # transformers reads the same file the same way.
  ref = transformers.Qwen2_5_VLConfig(**d).vision_config
  assert (ref.hidden_size, ref.depth, ref.window_size) == (1280, 32, 112)


def test_config_errors():
  with pytest.raises(ConfigError, match="unsupported model_type 'qwen2_vl'"):
    ModelConfig.from_hf_dict({**presets.hf_config("7b"), "model_type": "qwen2_vl"})
  with pytest.raises(ConfigError, match="mrope_section"):
    ModelConfig.from_hf_dict(
      {**presets.hf_config("7b"), "rope_scaling": {"type": "mrope", "mrope_section": [16, 16, 16]}}
    )


@pytest.mark.parametrize(
  "edit, words",
  [
    ({"hidden_size": 3585}, "hidden_size 3585, num_attention_heads 28 and num_key_value_heads 4 must divide"),
    ({"num_key_value_heads": 5}, "num_key_value_heads 5 must divide"),
    ({"num_hidden_layers": 2.5}, "num_layers must be a positive integer, got 2.5"),
    ({"vocab_size": "152064"}, "vocab_size must be a positive integer, got '152064'"),
    ({"intermediate_size": 0}, "intermediate_size must be a positive integer, got 0"),
    ({"rms_norm_eps": "tiny"}, "rms_norm_eps must be a positive number"),
    (
      {"vision_config": {"hidden_size": 1280, "num_heads": 3}},
      "vision_config.hidden_size 1280 is not a multiple",
    ),
    ({"vision_config": {"depth": True}}, "vision_config.depth must be a positive integer, got True"),
  ],
)
def test_a_bad_config_value_is_named(edit, words):
  """Each bad value is named as itself, not as a later symptom (a wrong hidden_size was
  reported as an mrope_section error)."""
  d = presets.hf_config("7b")
  d = {**d, **edit, "vision_config": {**d["vision_config"], **edit.get("vision_config", {})}}
  with pytest.raises(ConfigError) as e:
    ModelConfig.from_hf_dict(d, source="ckpt/config.json")
  assert str(e.value).startswith("ckpt/config.json: ") and words in str(e.value), str(e.value)


@pytest.mark.parametrize("preset", sorted(presets.RELEASED))
def test_presets_have_transformers_param_counts(preset):
  """Each preset builds (abstractly) a model with exactly transformers' parameter count."""
  from catts_jax.models.qwen2_5_vl.params import abstract_model

  cfg = ModelConfig.from_hf_dict(presets.hf_config(preset))
  assert presets.resolve({"preset": preset}).text == cfg.text  # a run naming the preset gets that shape
  ours = sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(abstract_model(cfg))))
  with torch.device("meta"):
    ref = transformers.Qwen2_5_VLForConditionalGeneration(
      transformers.Qwen2_5_VLConfig(**presets.hf_config(preset))
    )
  assert ours == sum(p.numel() for p in ref.parameters())
  assert cfg.text.head_dim == 128 and cfg.vision.head_dim == 80
  assert dataclasses.asdict(ModelConfig.from_hf_dict(cfg.to_hf_dict())) == dataclasses.asdict(cfg)
