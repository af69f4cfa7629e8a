"""One vision encode per distinct image: rows that repeat a (prompt, images) pair share its
slots (processing.Processor.encode), and the result equals giving every row its own copy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from tiny_hf import random_image

from catts_jax import roofline, sharding
from catts_jax.aot import shapes
from catts_jax.models.qwen2_5_vl import load_hf, presets
from catts_jax.processing import Processor
from catts_jax.rl.rollout import _repeat

G = 4  # samples of one problem, scored as G rows


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
  return Processor(tiny_ckpt), load_hf(tiny_ckpt)


def logits_of(model, batch):
  inputs = {k: jnp.asarray(v) for k, v in batch.model_inputs().items()}
  return np.asarray(nnx.jit(lambda m, x: m(**x))(model, inputs)[0])


def group_batches(processor, images, g=G):
  """The scoring batch of g responses to each prompt on `images` (one image a prompt), once
  with each prompt's image object repeated (shared) and once with a fresh copy a row."""
  rng = np.random.default_rng(0)
  prompt = processor.chat_prompt("What is in the picture?", 1)
  prompts = [prompt] * (g * len(images))
  responses = [rng.integers(0, 400, 3 + i % 5).tolist() for i in range(len(prompts))]
  shared = [[im] for im in images for _ in range(g)]
  copies = [[im.copy()] for im in images for _ in range(g)]
  return processor.scoring_batch(prompts, responses, shared), processor.scoring_batch(
    prompts, responses, copies
  )


def test_shared_rows_encode_once_and_equal_per_row_copies(setup):
  """G rows of one prompt and image: the HF image processor once on one image and the
  tokenizer once on one prompt, one slot, and logits equal to G rows each with its own copy
  (G slots, their pixels processed once)."""
  processor, model = setup
  image = random_image(np.random.default_rng(1), 84, 56)
  calls = []

  class Counting:
    """An HF processing object, recording what each call got."""

    def __init__(self, name, inner):
      self.name, self.inner = name, inner

    def __call__(self, *args, **kw):
      calls.append((self.name, len(kw.get("images", args[0] if args else kw.get("text")))))
      return self.inner(*args, **kw)

    def __getattr__(self, name):
      return getattr(self.inner, name)

  image_processor, tokenizer = processor.hf.image_processor, processor.tokenizer
  processor.hf.image_processor = Counting("images", image_processor)
  processor.tokenizer = Counting("prompts", tokenizer)
  try:
    shared, per_row = group_batches(processor, [image])
  finally:
    processor.hf.image_processor, processor.tokenizer = image_processor, tokenizer
  # The copies' pixels were processed for the shared rows: no second call, but G slots.
  assert calls == [("images", 1), ("prompts", 1)]
  assert shared.batch.pixel_values.shape[0] == 1 and per_row.batch.pixel_values.shape[0] == G
  np.testing.assert_array_equal(shared.batch.input_ids, per_row.batch.input_ids)
  np.testing.assert_array_equal(shared.batch.positions, per_row.batch.positions)
  valid = shared.batch.attention_mask.astype(bool)
  a, b = logits_of(model, shared.batch)[valid], logits_of(model, per_row.batch)[valid]
  assert np.abs(a - b).max() <= 1e-5
  assert np.abs(a).std() > 0.1  # real logits, not zeros on both sides


def test_interleaved_images_and_paths_share_by_identity(setup, tmp_path):
  """Rows [A, B, A] with B a path given as str and as Path: 2 slots; rows 0 and 2 read the
  same features, row 1 others; different prompts on one image do not share."""
  processor, model = setup
  rng = np.random.default_rng(2)
  a = random_image(rng, 56, 84)
  random_image(rng, 70, 56).save(tmp_path / "b.png")
  prompt = processor.chat_prompt("Describe it.", 1)
  batch = processor([prompt] * 3, [[a], [str(tmp_path / "b.png")], [a]])
  assert batch.image_grid_thw.shape[0] == 2 and batch.pixel_values.shape[0] == 2
  is_image = batch.input_ids == processor.cfg.image_token_id
  rows = [batch.image_index[r][is_image[r]] for r in range(3)]
  np.testing.assert_array_equal(rows[0], rows[2])
  per_slot = batch.pixel_values.shape[1] // processor.cfg.vision.spatial_merge_size**2
  # Slot order: A's features start slot 0, B's slot 1.
  np.testing.assert_array_equal(rows[0], np.arange(len(rows[0])))
  np.testing.assert_array_equal(rows[1], per_slot + np.arange(len(rows[1])))
  assert (batch.image_index[~is_image] == 0).all()
  # Row 1's spliced image embeddings are B's features encoded alone (slot 0, no index).
  alone = processor([prompt], [[str(tmp_path / "b.png")]])
  features = nnx.jit(lambda m, x: m.visual(x["pixel_values"], x["patch_pos"], x["patch_image"]))(
    model, {k: jnp.asarray(v) for k, v in alone.model_inputs().items()}
  )
  inputs = {
    k: jnp.asarray(v) for k, v in batch.model_inputs().items() if k not in ("positions", "attention_mask")
  }
  embeds = np.asarray(nnx.jit(lambda m, x: m.embed(**x))(model, inputs))
  np.testing.assert_allclose(embeds[1][is_image[1]], np.asarray(features)[: len(rows[1])], atol=1e-5)
  paths = processor([prompt] * 2, [[tmp_path / "b.png"], [str(tmp_path / "b.png")]])
  assert paths.pixel_values.shape[0] == 1
  other = processor([prompt, processor.chat_prompt("Count.", 1)], [[a], [a]])
  assert other.image_grid_thw.shape[0] == 2
  # The same rows with their own copies give the same logits.
  b = processor([prompt] * 3, [[a.copy()], [str(tmp_path / "b.png")], [a.copy()]])
  assert b.pixel_values.shape[0] == 4  # 3 images, bucketed
  valid = batch.attention_mask.astype(bool)
  assert np.abs(logits_of(model, batch)[valid] - logits_of(model, b)[valid]).max() <= 1e-5


def test_rollout_rows_share_their_problems_images(setup):
  """The rollout's passes list each problem's prompt and images G times (`rollout._repeat`):
  P problems x G rows make P slots."""
  processor, _ = setup
  rng = np.random.default_rng(5)
  prompts = [processor.chat_prompt(q, 1) for q in ("How many?", "Which colour?")]
  images = [[random_image(rng, 56, 56)], [random_image(rng, 70, 56)]]
  rows = _repeat(prompts, G)
  sb = processor.scoring_batch(rows, [[7, 8]] * len(rows), _repeat(images, G))
  assert sb.batch.num_rows == 2 * G and sb.batch.pixel_values.shape[0] == 2


def vision_flops(model, batch) -> float:
  """XLA's FLOP count of the compiled image splice (vision tower + gather) for `batch`."""
  graphdef, state = nnx.split(model)
  keys = ("input_ids", "pixel_values", "patch_pos", "patch_image", "image_index")
  inputs = {k: jnp.asarray(v) for k, v in batch.model_inputs().items() if k in keys}
  embed = jax.jit(lambda s, x: nnx.merge(graphdef, s).embed(**x))
  cost = embed.lower(state, inputs).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])


def test_vision_flops_fall_by_group_size(setup):
  processor, model = setup
  g = 8
  shared, per_row = group_batches(processor, [random_image(np.random.default_rng(3), 84, 84)], g)
  assert shared.batch.pixel_values.shape[0] == 1 and per_row.batch.pixel_values.shape[0] == g
  ratio = vision_flops(model, per_row.batch) / vision_flops(model, shared.batch)
  print(f"vision FLOPs, {g} rows on one image: per-row copies / shared = {ratio:.3f}")
  assert g * 0.95 < ratio < g * 1.05


def test_sharded_slots_equal_one_device(setup, tiny_ckpt):
  """8 devices (data 2 x fsdp 2 x tensor 2): 4 distinct images, 2 rows each, slots sharded
  over data x fsdp (one a device pair); logits equal one device's."""
  processor, model = setup
  rng = np.random.default_rng(4)
  shared, _ = group_batches(processor, [random_image(rng, 56 + 14 * i, 56) for i in range(4)], 2)
  batch = shared.batch
  assert batch.pixel_values.shape[0] == 4
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = sharding.shard_model(load_hf(tiny_ckpt), mesh)
  inputs = batch.model_inputs()
  placed = sharding.put(inputs, sharding.input_shardings(inputs, mesh))
  assert placed["pixel_values"].sharding.spec == P(("data", "fsdp"), None, None)
  assert placed["image_index"].sharding.spec == P(("data", "fsdp"), None)
  assert placed["pixel_values"].addressable_shards[0].data.shape[0] == 1
  with jax.set_mesh(mesh):
    logits = np.asarray(nnx.jit(lambda m, x: m(**x))(sharded, placed)[0])
  valid = batch.attention_mask.astype(bool)
  assert np.abs(logits[valid] - logits_of(model, batch)[valid]).max() <= 1e-5


def test_train_batch_plans_one_image_slot_a_prompt():
  """trainer_shapes: 2 prompts x 8 samples -> 16 rows but 2 image slots, and the analytic
  vision FLOPs are those of 2 images, not 16."""
  cfg = presets.resolve({"preset": "small"})
  s = shapes.trainer_shapes(cfg, prompts=2, group=8, max_new_tokens=16, prompt_len=64, image_patches=64)
  assert (s.rows, s.images, s.patches) == (16, 2, 2 * 64)
  batch = shapes.train_batch(cfg, s)
  assert batch.pixel_values.shape[0] == 2 and batch.image_index.shape == batch.input_ids.shape == (
    16,
    s.seq_len,
  )
  per_row = dataclasses.replace(s, images=16, patches=16 * 64)
  window = min(64, cfg.vision.window_patches**2)
  extra = shapes.analytic_train_flops(cfg, per_row) - shapes.analytic_train_flops(cfg, s)
  assert extra == pytest.approx(3 * 14 * roofline.vision_flops(cfg, 64, window))
