"""Fast checks of the tiny random Qwen2.5-VL checkpoint builder (tests/tiny_hf.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from tiny_hf import SEVEN_B_SHAPE, SPECIAL_TOKENS, TINY, build_tiny_checkpoint, random_image

PRESETS = {"tiny": TINY, "seven_b_shape": SEVEN_B_SHAPE}


def _messages_with_image(question: str):
  return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def _torch_batch(batch):
  return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_checkpoint_loads_and_runs(tmp_path, preset):
  spec = PRESETS[preset]
  path = build_tiny_checkpoint(tmp_path / preset, **spec)
  assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()

  processor = transformers.AutoProcessor.from_pretrained(path)
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
  model.eval()
  tok = processor.tokenizer
  cfg = model.config

  # Special tokens: contiguous block right after the trained vocab, real Qwen order.
  ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
  assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
  assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
  assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
  assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
  assert cfg.text_config.vocab_size % 64 == 0 and cfg.text_config.vocab_size >= len(tok)
  assert 400 <= ids[0] <= 600

  # Config overrides really took effect (mrope_section lives in rope_parameters in transformers 5).
  rope = cfg.text_config.rope_parameters
  assert list(rope["mrope_section"]) == spec["text"]["rope_parameters"]["mrope_section"]
  assert rope["rope_theta"] == spec["text"]["rope_parameters"]["rope_theta"]
  assert list(model.model.language_model.rotary_emb.mrope_section) == list(rope["mrope_section"])
  assert list(cfg.vision_config.fullatt_block_indexes) == spec["vision"]["fullatt_block_indexes"]
  assert cfg.vision_config.window_size == spec["vision"]["window_size"]
  assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size

  # Every parameter is non-trivial: biases nonzero, norm weights not all ones.
  for name, p in model.named_parameters():
    if name.endswith(".bias"):
      assert p.abs().min() > 0, name
    if "norm" in name or "ln_q" in name:
      assert (p - 1).abs().max() > 0.05, name

  # Chat template: list content with an image, and plain-string content.
  text_img = processor.apply_chat_template(
    _messages_with_image("What is in this image?"), tokenize=False, add_generation_prompt=True
  )
  assert text_img == (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in this image?<|im_end|>\n"
    "<|im_start|>assistant\n"
  )
  text_plain = processor.apply_chat_template(
    [{"role": "user", "content": "Count to 3."}], tokenize=False, add_generation_prompt=True
  )
  assert text_plain.endswith("<|im_start|>user\nCount to 3.<|im_end|>\n<|im_start|>assistant\n")

  image = random_image(np.random.default_rng(0), 90, 70)
  assert image.size == (90, 70) and image.mode == "RGB"
  batch = processor(text=[text_img, text_plain], images=[image], return_tensors="np", padding=True)
  for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
    assert key in batch, key
  grid = np.asarray(batch["image_grid_thw"])
  assert grid.shape == (1, 3)
  n_img_tokens = int(grid[0].prod()) // 4  # merge_size 2 -> 2x2 patches per token
  input_ids = np.asarray(batch["input_ids"])
  assert int((input_ids[0] == cfg.image_token_id).sum()) == n_img_tokens
  assert int((input_ids[1] == cfg.image_token_id).sum()) == 0
  np.testing.assert_array_equal(np.asarray(batch["mm_token_type_ids"]) == 1, input_ids == cfg.image_token_id)
  assert np.asarray(batch["pixel_values"]).shape == (int(grid[0].prod()), 3 * 2 * 14 * 14)

  with torch.no_grad():
    logits = model(**_torch_batch(batch)).logits
    assert logits.shape == (*input_ids.shape, cfg.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    std_mm = logits[torch.from_numpy(np.asarray(batch["attention_mask"])).bool()].std().item()
    rand_ids = torch.randint(0, ids[0], (2, 48), generator=torch.Generator().manual_seed(1))
    std_text = model(input_ids=rand_ids).logits.std().item()
  assert 0.5 <= std_mm <= 5.0, std_mm
  assert 0.5 <= std_text <= 5.0, std_text


def test_sharded_checkpoint_has_same_weights(tmp_path):
  single = build_tiny_checkpoint(tmp_path / "single", **TINY)
  sharded = build_tiny_checkpoint(tmp_path / "sharded", max_shard_size="200KB", **TINY)

  index = json.loads((sharded / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1 and all((sharded / s).is_file() for s in shards)
  assert not (sharded / "model.safetensors").exists()
  # Hub (original-format) key names, as in the real Qwen2.5-VL checkpoints.
  for key in (
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.bias",
    "model.norm.weight",
    "visual.patch_embed.proj.weight",
    "visual.merger.ln_q.weight",
    "lm_head.weight",
  ):
    assert key in index["weight_map"], key

  a = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(single).state_dict()
  b = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(sharded).state_dict()
  assert a.keys() == b.keys()
  for k in a:
    assert torch.equal(a[k], b[k]), k


def test_deterministic_bytes(tmp_path):
  one = build_tiny_checkpoint(tmp_path / "one", **TINY)
  two = build_tiny_checkpoint(tmp_path / "two", **TINY)
  other_seed = build_tiny_checkpoint(tmp_path / "three", seed=1, **TINY)
  for name in ("model.safetensors", "tokenizer.json", "config.json"):
    assert (one / name).read_bytes() == (two / name).read_bytes(), name
  assert (one / "model.safetensors").read_bytes() != (other_seed / "model.safetensors").read_bytes()


def test_tied_embeddings(tmp_path):
  path = build_tiny_checkpoint(tmp_path / "tied", tie_word_embeddings=True, **TINY)
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
  assert model.config.tie_word_embeddings
  assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)
  from safetensors import safe_open

  with safe_open(str(path / "model.safetensors"), "np") as f:
    assert "lm_head.weight" not in set(f.keys())
