"""Tiny random Qwen2.5-VL checkpoints in Hugging Face format, built locally.

The test-suite uses these as a stand-in for a real downloaded checkpoint
directory (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``): the directory written by
:func:`build_tiny_checkpoint` loads with ``transformers.AutoProcessor`` and
``transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained`` without
any hub access.

Everything is built here:

* a byte-level BPE tokenizer trained with ``tokenizers`` on the small corpus
  below, with the Qwen2.5 special tokens appended after the regular vocabulary
  (same order as the real tokenizer, so ``<|endoftext|>`` is the first special
  id and ``<|image_pad|>`` is ``<|endoftext|> + 12``);
* the Qwen2.5-VL chat template;
* a ``Qwen2_5_VLProcessor`` (``Qwen2VLImageProcessor`` + ``Qwen2VLVideoProcessor``);
* a randomly initialised ``Qwen2_5_VLForConditionalGeneration`` whose every
  parameter is non-trivial (nonzero biases, RMSNorm weights ``1 + N(0, 0.1)``),
  so that a port that drops a bias or a norm weight disagrees with it.

Usage::

    from tests.tiny_hf import TINY, build_tiny_checkpoint
    path = build_tiny_checkpoint(tmp_path / "ckpt", **TINY)
"""

from __future__ import annotations

import copy
import math
import pathlib

import numpy as np

from catts_jax import scratch
from catts_jax.models.qwen2_5_vl import presets
from catts_jax.scratch import SPECIAL_TOKENS

__all__ = [
  "SEVEN_B_SHAPE",
  "SPECIAL_TOKENS",
  "TINY",
  "build_tiny_checkpoint",
  "build_tokenizer",
  "random_image",
]

# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------

# The test shapes, from the one table of shapes (catts_jax/models/qwen2_5_vl/presets.py).
TINY: dict = presets.scratch_shape("tiny")
SEVEN_B_SHAPE: dict = presets.scratch_shape("seven_b_shape")

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

_CORPUS = [
  """The little harbour town woke slowly in the grey light of the morning. Fishing boats
rocked against the wooden pier, and the gulls circled above the nets, crying for scraps.
An old woman opened the shutters of the bakery and the smell of warm bread drifted down
the street, where a boy on a red bicycle was delivering the newspapers.""",
  """A picture shows a small brown dog sitting on a green chair next to a window. Behind the
dog there is a blue wall with a painting of a mountain, a lake and three white clouds. On
the table in front of the chair there are two cups of tea, a yellow lemon and a book with
a black cover. The light comes from the left side of the image.""",
  """What is in this image? Describe the picture in detail. How many people can you see, and
what are they doing? Where is the cat? Which colour is the car? Please answer the question
with a short sentence, then explain your reasoning step by step.""",
  """You are a helpful assistant. The user asks a question and the assistant answers it as well
as it can. If the assistant does not know the answer, it should say so instead of making
something up. Answers should be clear, correct and kind.
system
user
assistant
user""",
  """Machine learning models learn patterns from data. A vision language model reads an image
as a grid of small patches, turns every patch into a vector, and lets the language model
attend to these vectors together with the words of the prompt. Training uses many examples
of images paired with text, and the model slowly improves its predictions.""",
  """In the spring the garden was full of flowers: red roses, white lilies, purple violets and
bright yellow sunflowers that turned their heads to follow the sun. Bees moved from one
flower to another, and a small bird built its nest in the apple tree by the old stone wall.""",
  """Numbers and maths: 0 1 2 3 4 5 6 7 8 9 10 12 24 42 100 256 1024 2025 3.14159 2.71828.
1 + 1 = 2, 2 * 3 = 6, 10 - 4 = 6, 9 / 3 = 3, 2^10 = 1024, x^2 + y^2 = z^2, (a + b) * c,
f(x) = 3x + 7, 50% of 80 is 40, 7 < 9 > 5, a <= b >= c, a != b, [1, 2, 3], {x: 1}, #5, $20, ~3,
the box is at (12, 34), (56, 78) and the answer is 42!""",
  """She said, "It's a beautiful day, isn't it?" He replied: "Yes; we'll walk to the river and
we'd better take the umbrella, because they've said it might rain later." I'm sure you're
right, and the children will love it.""",
]


def build_tokenizer():
  """The tiny vocab (BPE on the corpus above) with the Qwen2.5 special tokens."""
  # Repeat the corpus a few times so that min_frequency never starves the merges.
  return scratch.build_tokenizer(_CORPUS * 3, vocab_size=512)


# ---------------------------------------------------------------------------
# Model weights
# ---------------------------------------------------------------------------

# Noise scales. Linear / conv weights get N(0, _W_GAIN / sqrt(fan_in)) so that
# activations stay O(1) through the stack; biases get N(0, _B_STD) so that
# they visibly shift every projection; RMSNorm weights become 1 + N(0, _NORM_STD).
_W_GAIN = 1.0
_B_STD = 0.2
_NORM_STD = 0.1
_EMBED_GAIN = 1.0  # embed_tokens / lm_head: N(0, _EMBED_GAIN / sqrt(hidden)) -> logits std ~ 1


def _perturb_(model, generator) -> None:
  import torch

  text_hidden = model.config.text_config.hidden_size
  with torch.no_grad():
    for name, p in model.named_parameters(remove_duplicate=True):
      shape = tuple(p.shape)
      if "norm" in name or ".ln_q." in name:
        # RMSNorm weights (text input/post-attention/final norms, vision norm1/norm2, merger ln_q).
        assert p.ndim == 1, name
        p.copy_(1.0 + _NORM_STD * torch.randn(shape, generator=generator))
      elif name.endswith(".bias"):
        p.add_(_B_STD * torch.randn(shape, generator=generator))
      elif "embed_tokens" in name or name.endswith("lm_head.weight"):
        p.add_(_EMBED_GAIN / math.sqrt(text_hidden) * torch.randn(shape, generator=generator))
      elif p.ndim >= 2:
        fan_in = int(np.prod(shape[1:]))
        p.add_(_W_GAIN / math.sqrt(fan_in) * torch.randn(shape, generator=generator))
      else:
        raise AssertionError(f"unhandled parameter {name} {shape}")


# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------


def build_tiny_checkpoint(
  out_dir,
  *,
  text: dict | None = None,
  vision: dict | None = None,
  seed: int = 0,
  tie_word_embeddings: bool = False,
  max_shard_size: str | None = None,
  min_pixels: int = 56 * 56,
  max_pixels: int = 28 * 28 * 64,
) -> pathlib.Path:
  """Write a tiny random Qwen2.5-VL checkpoint (model + processor) into ``out_dir``.

  ``text`` / ``vision`` override fields of ``Qwen2_5_VLTextConfig`` /
  ``Qwen2_5_VLVisionConfig`` (defaults: the ``TINY`` preset). ``vocab_size``
  and ``out_hidden_size`` are derived (len(tokenizer) rounded up to 64, text
  hidden size) unless given explicitly. Same arguments -> byte-identical
  safetensors.
  """
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  text_kw = {**copy.deepcopy(TINY["text"]), **copy.deepcopy(text or {})}
  vision_kw = {**copy.deepcopy(TINY["vision"]), **copy.deepcopy(vision or {})}

  tokenizer = build_tokenizer()
  scratch.build_processor(tokenizer, vision_kw, min_pixels, max_pixels).save_pretrained(out)
  config = scratch.hf_config(tokenizer, text_kw, vision_kw, tie_word_embeddings)

  torch.manual_seed(seed)
  model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
  generator = torch.Generator().manual_seed(seed + 0x5EED)
  _perturb_(model, generator)
  model.eval()

  # transformers 5 always writes safetensors, and (save_original_format=True, the
  # default) under the hub key names of the real checkpoints: "model.layers.*",
  # "model.embed_tokens.weight", "visual.*", "lm_head.weight" (absent when tied).
  save_kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(out, **save_kw)
  return out


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def random_image(rng: np.random.Generator, width: int, height: int, mode: str = "RGB"):
  """A ``PIL.Image`` of uniform random pixels of the given size and mode."""
  from PIL import Image

  rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  img = Image.fromarray(rgb, mode="RGB")
  return img if mode == "RGB" else img.convert(mode)
