"""From-scratch checkpoints: a normal HF directory that transformers and the Flax port load
and agree on."""

import numpy as np
import pytest

from catts_jax import scratch

TEXT = dict(
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  rope_parameters=dict(rope_type="default", rope_theta=1e4, mrope_section=[2, 3, 3]),
  max_position_embeddings=512,
)
VISION = dict(
  depth=2, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56, fullatt_block_indexes=[1]
)
CORPUS = ["What colour is the shape?", "The square is red. The answer is \\boxed{red}."] * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return scratch.new_checkpoint(
    tmp_path_factory.mktemp("scratch") / "m", corpus=CORPUS, text=TEXT, vision=VISION, vocab_size=300
  )


def test_tokenizer_keeps_qwen_special_token_order(ckpt):
  from transformers import AutoProcessor

  tok = AutoProcessor.from_pretrained(ckpt).tokenizer
  ids = tok.convert_tokens_to_ids(list(scratch.SPECIAL_TOKENS))
  assert ids == list(range(ids[0], ids[0] + len(ids)))
  assert len(tok("The square is red.").input_ids) < len("The square is red.")  # merges learned


def test_fan_in_init_scales(ckpt):
  from safetensors.numpy import load_file

  w = load_file(str(ckpt / "model.safetensors"))
  fc1 = w["visual.merger.mlp.0.weight"]
  assert abs(fc1.std() * np.sqrt(fc1.shape[1]) - 1) < 0.1
  assert np.all(w["visual.blocks.0.norm1.weight"] == 1)
  assert np.all(w["visual.blocks.0.attn.qkv.bias"] == 0)


def test_transformers_and_flax_agree(ckpt):
  """The verify command's full check (logits with 0/1/2 images and a padded batch, greedy
  continuation, sampler/scorer log-probs) on a from-scratch checkpoint."""
  from catts_jax.verify import verify

  result = verify(ckpt, new_tokens=8)
  assert result["ok"], result
