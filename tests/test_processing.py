"""Prompts + images -> bucketed numpy batches."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_hf import random_image
from transformers.vision_utils import get_vision_position_ids

from catts_jax.processing import (
  Processor,
  bucket,
  image_slots,
  image_token_index,
  length_buckets,
  patch_metadata,
  pixel_digest,
  power_of_two_buckets,
  text_buckets,
)


@pytest.mark.parametrize("per_octave", [1, 4])
def test_buckets_bound_shapes(tiny_ckpt, per_octave):
  """Different prompt lengths and image sizes fall into a few fixed shapes; four buckets per
  octave pad rows by under a quarter."""
  processor = Processor(tiny_ckpt, buckets_per_octave=per_octave)
  # The defaults train.compile's planner also uses.
  longest = processor.cfg.text.max_position_embeddings
  assert (processor.seq_buckets, processor.response_buckets) == text_buckets(longest, per_octave)
  rng = np.random.default_rng(0)
  shapes = set()
  for words, (w, h) in zip(range(1, 9), [(56, 56), (90, 70), (112, 84), (60, 100)] * 2):
    batch = processor([processor.chat_prompt("count " * words, 1)], [[random_image(rng, w, h)]])
    shapes.add((batch.input_ids.shape, batch.pixel_values.shape))
    assert batch.input_ids.shape[1] in processor.seq_buckets
    assert batch.pixel_values.shape[0] in processor.image_buckets
    assert batch.pixel_values.shape[1] in processor.patch_buckets
    # Padding is on the left and padded patches belong to no image.
    assert batch.attention_mask[0, -1] == 1
    assert per_octave == 1 or batch.input_ids.shape[1] < 1.25 * batch.attention_mask.sum()
    n_real = int(batch.image_grid_thw.prod(-1).sum())
    assert (batch.patch_image[0, n_real:] == -1).all() and (batch.patch_image[0, :n_real] == 0).all()
  # Prompts of 37 to 69 tokens: buckets 64 and 128, or 40, 48, 56, 64 and 80; one image shape.
  assert len(shapes) <= {1: 2, 4: 5}[per_octave] and len({pixels for _, pixels in shapes}) == 1, shapes


def test_bucket_helpers():
  assert power_of_two_buckets(32, 100) == (32, 64, 100)
  assert bucket(33, (32, 64), "x") == 64
  with pytest.raises(ValueError, match="prompt 0 length in tokens: 65 exceeds the largest bucket 64"):
    bucket(65, (32, 64), "prompt 0 length in tokens")


def test_length_buckets_pad_by_under_a_quarter():
  assert length_buckets(32, 300) == power_of_two_buckets(32, 300) == (32, 64, 128, 256, 300)
  assert length_buckets(32, 300, 4) == (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 300)
  buckets = length_buckets(32, 4096, 4)
  for n in range(1, 4097):
    b = bucket(n, buckets, "x")
    assert b >= n and (n <= 32 or b < 1.25 * n), (n, b)
  with pytest.raises(ValueError, match="multiple of per_octave 4"):
    length_buckets(30, 100, 4)


def test_over_long_prompt_names_it(tiny_ckpt):
  processor = Processor(tiny_ckpt, seq_buckets=(32, 64))
  with pytest.raises(ValueError, match=r"prompt 1 length in tokens: \d+ exceeds the largest bucket 64"):
    processor([processor.chat_prompt("hi"), processor.chat_prompt("the answer is 42 " * 30)])


def test_patch_metadata_matches_transformers():
  grid = np.array([[1, 4, 6], [1, 8, 2], [1, 2, 2]])
  pos, image = patch_metadata(grid, 2)
  ref = get_vision_position_ids(torch.from_numpy(grid), 2).numpy()
  np.testing.assert_array_equal(pos, ref)
  np.testing.assert_array_equal(image, np.repeat([0, 1, 2], [24, 16, 4]))


def test_image_slots_hold_each_image_in_order():
  """Mixed sizes: one image per slot, padded to bucketed slot and image counts; reading the
  real patches back in order gives the processor's flat layout."""
  grid = np.array([[1, 4, 6], [1, 8, 2], [1, 2, 2]])
  flat = np.random.default_rng(0).standard_normal((44, 5)).astype(np.float32)
  pixels, pos, image = image_slots(flat, grid, 2, image_buckets=(2, 4, 8), patch_buckets=(16, 32))
  assert pixels.shape == (4, 32, 5) and pos.shape == (4, 32, 2) and image.shape == (4, 32)
  np.testing.assert_array_equal((image >= 0).sum(1), [24, 16, 4, 0])
  real = image >= 0
  np.testing.assert_array_equal(pixels[real], flat)
  flat_pos, flat_image = patch_metadata(grid, 2)
  np.testing.assert_array_equal(pos[real], flat_pos)
  np.testing.assert_array_equal(image[real], flat_image)
  assert (pixels[~real] == 0).all()
  with pytest.raises(ValueError, match="patches per image: 24 exceeds the largest bucket 16"):
    image_slots(flat, grid, 2, image_buckets=(4,), patch_buckets=(16,))


def test_image_token_index_follows_the_slots():
  """Frame f of image g lives in slot (frames before g) + f, slot_size / merge^2 features a
  slot; each row's image tokens read its images' features in order, padding reads 0."""
  img = 9
  grid = np.array([[2, 4, 2], [1, 2, 2]])  # two frames of 2 tokens, then one frame of 1 token
  ids = np.array([[0, 1, img, img, img, img, 2], [img, 3, img, img, img, img, 4]])
  index = image_token_index(ids, img, [[0], [1, 0]], grid, slot_size=8, merge=2)
  np.testing.assert_array_equal(index, [[0, 0, 0, 1, 2, 3, 0], [4, 0, 0, 1, 2, 3, 0]])
  with pytest.raises(ValueError, match="row 0: 4 image tokens but its images make 1"):
    image_token_index(ids, img, [[1], [0]], grid, slot_size=8, merge=2)


def test_bad_inputs_name_the_item(tiny_ckpt, tmp_path):
  processor = Processor(tiny_ckpt)
  with pytest.raises(ValueError, match="prompt 1: 1 image placeholders but 0 images"):
    processor([processor.chat_prompt("a"), processor.chat_prompt("b", 1)], [[], []])
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"broken\.png: cannot read image"):
    processor([processor.chat_prompt("b", 1)], [[broken]])


def test_image_paths_and_modes(tiny_ckpt, tmp_path):
  """Paths and non-RGB images (grayscale, RGBA) are converted explicitly to RGB."""
  processor = Processor(tiny_ckpt)
  rng = np.random.default_rng(1)
  rgb = random_image(rng, 90, 70)
  rgb.save(tmp_path / "x.png")
  prompt = processor.chat_prompt("b", 1)
  a = processor([prompt], [[tmp_path / "x.png"]])
  b = processor([prompt], [[rgb.convert("RGBA")]])
  np.testing.assert_allclose(a.pixel_values, b.pixel_values)
  c = processor([prompt], [[rgb.convert("L")]])
  assert c.pixel_values.shape == a.pixel_values.shape


def test_pixel_bounds_resize_images(tiny_ckpt):
  """min_pixels / max_pixels bound each image's resized area (the 3B/7B training configs set them)."""
  rng = np.random.default_rng(2)
  image = random_image(rng, 448, 448)
  prompt = "<|vision_start|><|image_pad|><|vision_end|>"
  default = Processor(tiny_ckpt)([prompt], [[image]])
  small = Processor(tiny_ckpt, min_pixels=56 * 56, max_pixels=112 * 112)([prompt], [[image]])
  assert small.image_grid_thw.tolist() == [[1, 8, 8]]
  assert default.image_grid_thw.prod() > small.image_grid_thw.prod()
  with pytest.raises(ValueError, match="give both or neither"):
    Processor(tiny_ckpt, max_pixels=112 * 112)


def test_encoded_pairs_are_kept_for_later_calls(tiny_ckpt):
  """A (prompt, image) pair encoded once is not encoded again in a later call, and rows
  built from kept pairs equal the HF processor's; other pixels are a new pair; the
  least recently used pairs leave first when the bytes run out."""
  rng = np.random.default_rng(0)
  cached = Processor(tiny_ckpt)
  hf, calls = cached.hf, []
  encode = cached._hf_encode
  cached._hf_encode = lambda prompts, *rest: calls.append(len(prompts)) or encode(prompts, *rest)
  a, b = random_image(rng, 56, 56), random_image(rng, 90, 70)
  prompt, other = cached.chat_prompt("how many bars?", 1), cached.chat_prompt("which colour?", 1)
  cached([prompt], [[a]])
  assert calls == [1]
  # The same pixels in a new object, beside a new pair: only the new pair is processed.
  prompts, images = [prompt, other, prompt], [[a.copy()], [b], [a]]
  encoded = cached.encode(prompts, images)
  assert calls == [1, 1]
  # Each row's tokens and patches equal the HF processor's on the rows one by one.
  for i, (p, imgs) in enumerate(zip(prompts, images)):
    want = hf(text=[p], images=imgs, return_tensors="np")
    np.testing.assert_array_equal(encoded.ids[i], want["input_ids"][0])
    (image,) = encoded.row_images[i]
    start = int(encoded.image_grid_thw[:image].prod(-1).sum())
    np.testing.assert_array_equal(encoded.image_grid_thw[image], want["image_grid_thw"][0])
    np.testing.assert_array_equal(
      encoded.pixel_values[start : start + len(want["pixel_values"])], want["pixel_values"]
    )
  assert len(encoded.image_grid_thw) == 3  # slots by identity: the copy has its own
  # Two new objects with the same new pixels: processed once, a slot each.
  c = random_image(rng, 70, 70)
  twins = cached.encode([prompt, prompt], [[c], [c.copy()]])
  assert calls == [1, 1, 1] and len(twins.image_grid_thw) == 2
  np.testing.assert_array_equal(*np.split(twins.pixel_values, 2))
  changed = np.asarray(a).copy()
  changed[0, 0] ^= 1
  cached([prompt], [[Image.fromarray(changed)]])
  assert calls == [1, 1, 1, 1]
  # Room for two pairs: a third pushes out the least recently used.
  small = Processor(tiny_ckpt)
  small.cache.max_bytes = 2 * small.encode([prompt], [[a]]).pixel_values.nbytes + 4096
  small.encode([other], [[a]])
  small.encode([prompt], [[a]])  # used again: now the most recent
  small.encode([prompt + " "], [[a]])
  kept = small.cache.get_many([(p, (pixel_digest(a),)) for p in (prompt, other, prompt + " ")])
  assert [entry is not None for entry in kept] == [True, False, True]
  assert small.cache.nbytes <= small.cache.max_bytes
  # Kept images own their memory (no view holding a whole call's pixels).
  assert all(p.base is None for entry in kept if entry for p in entry.pixels)


def test_an_image_is_processed_once_for_all_its_prompts(tiny_ckpt):
  """CA-TTS asks about one image in many prompts (the Expert's, the re-answer's, the
  self-check's): its pixels go through the HF image processor once, and every prompt's tokens
  and patches still equal the HF processor's on the whole padded batch."""
  rng = np.random.default_rng(1)
  proc = Processor(tiny_ckpt)
  image_processor, processed = proc.hf.image_processor, []
  preprocess = image_processor.preprocess
  image_processor.preprocess = lambda images, *a, **k: (
    processed.append(len(images)) or preprocess(images, *a, **k)
  )
  a, b = random_image(rng, 56, 84), random_image(rng, 90, 70)
  one, two = proc.chat_prompt("how many bars?", 1), proc.chat_prompt("which one is taller?", 2)
  proc.encode([one], [[a]])
  assert processed == [1]
  prompts, images = [two, proc.chat_prompt("which colour?", 1)], [[b, a.copy()], [a]]
  encoded = proc.encode(prompts, images)
  assert processed == [1, 1]  # b only: a's pixels were processed for the first prompt
  del image_processor.preprocess
  want = proc.hf(text=prompts, images=[b, a, a], return_tensors="np", padding=True)
  for i, (row, mask) in enumerate(zip(want["input_ids"], want["attention_mask"])):
    np.testing.assert_array_equal(encoded.ids[i], row[mask.astype(bool)])
  np.testing.assert_array_equal(encoded.image_grid_thw, want["image_grid_thw"])
  np.testing.assert_array_equal(encoded.pixel_values, want["pixel_values"])
  assert all(p.base is None for entry in proc.image_cache._entries.values() for p in entry.pixels)
