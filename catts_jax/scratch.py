"""New Qwen2.5-VL checkpoints from nothing: a BPE tokenizer trained on your corpus with the Qwen
special tokens and chat template, the real Qwen2.5-VL processor, and freshly initialised weights,
written as a normal Hugging Face directory (transformers and `Policy.from_pretrained` load it).

  path = new_checkpoint("runs/tiny", corpus=texts, text=dict(hidden_size=128, ...), vision=...)

Used for the synthetic task's models (trained from scratch here, since no pretrained VLM can be
downloaded) and, with perturbed weights, by the test-suite's parity checkpoints.
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Callable, Sequence

# Same strings and order as the real Qwen2.5 tokenizer (ids 151643..151656 there).
SPECIAL_TOKENS: tuple[str, ...] = (
  "<|endoftext|>",
  "<|im_start|>",
  "<|im_end|>",
  "<|object_ref_start|>",
  "<|object_ref_end|>",
  "<|box_start|>",
  "<|box_end|>",
  "<|quad_start|>",
  "<|quad_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|vision_pad|>",
  "<|image_pad|>",
  "<|video_pad|>",
)

# The chat template of Qwen/Qwen2.5-VL-7B-Instruct.
CHAT_TEMPLATE = (
  "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
  "{% for message in messages %}"
  "{% if loop.first and message['role'] != 'system' %}"
  "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
  "{% endif %}"
  "<|im_start|>{{ message['role'] }}\n"
  "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
  "{% else %}"
  "{% for content in message['content'] %}"
  "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
  "{% set image_count.value = image_count.value + 1 %}"
  "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
  "<|vision_start|><|image_pad|><|vision_end|>"
  "{% elif content['type'] == 'video' or 'video' in content %}"
  "{% set video_count.value = video_count.value + 1 %}"
  "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
  "<|vision_start|><|video_pad|><|vision_end|>"
  "{% elif 'text' in content %}{{ content['text'] }}"
  "{% endif %}"
  "{% endfor %}<|im_end|>\n"
  "{% endif %}"
  "{% endfor %}"
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The pre-tokenisation regex of Qwen2 (also used by transformers' Qwen2Tokenizer).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Qwen2.5-VL's vision defaults; a from-scratch model overrides sizes, not these.
PATCH = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)


def train_bpe(corpus: Sequence[str], vocab_size: int, min_frequency: int = 2) -> tuple[dict, list]:
  """A byte-level BPE with Qwen2's pre-tokenizer trained on `corpus`: (vocab, merges)."""
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=min_frequency,
    show_progress=False,
    special_tokens=[],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(list(corpus), trainer=trainer)
  model = json.loads(tok.to_str())["model"]
  merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  return dict(model["vocab"]), merges


def build_tokenizer(corpus: Sequence[str], vocab_size: int = 512):
  """A `Qwen2Tokenizer` with a vocab trained on `corpus`, the Qwen2.5 special tokens after it
  (in the real order, so `<|image_pad|>` = `<|endoftext|>` + 12) and the chat template."""
  from tokenizers import AddedToken
  from transformers import Qwen2Tokenizer

  vocab, merges = train_bpe(corpus, vocab_size)
  n = len(vocab)
  if sorted(vocab.values()) != list(range(n)):
    raise ValueError("trained vocab ids are not contiguous")
  added = {
    n + i: AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
    for i, t in enumerate(SPECIAL_TOKENS)
  }
  tokenizer = Qwen2Tokenizer(
    vocab=vocab,
    merges=merges,
    unk_token=None,
    bos_token=None,
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    added_tokens_decoder=added,
    extra_special_tokens=list(SPECIAL_TOKENS[1:]),
    model_max_length=131072,
    chat_template=CHAT_TEMPLATE,
    clean_up_tokenization_spaces=False,
    split_special_tokens=False,
  )
  for i, t in enumerate(SPECIAL_TOKENS):
    if tokenizer.convert_tokens_to_ids(t) != n + i:
      raise ValueError(f"special token {t!r} did not get id {n + i}")
  return tokenizer


def build_processor(tokenizer, vision: dict, min_pixels: int, max_pixels: int):
  """The real `Qwen2_5_VLProcessor` around `tokenizer`, with the vision tower's patching."""
  from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor
  from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

  kw = dict(
    patch_size=vision.get("patch_size", PATCH["patch_size"]),
    merge_size=vision.get("spatial_merge_size", PATCH["spatial_merge_size"]),
    temporal_patch_size=vision.get("temporal_patch_size", PATCH["temporal_patch_size"]),
    min_pixels=min_pixels,
    max_pixels=max_pixels,
    image_mean=list(OPENAI_CLIP_MEAN),
    image_std=list(OPENAI_CLIP_STD),
  )
  return Qwen2_5_VLProcessor(
    image_processor=Qwen2VLImageProcessor(**kw),
    tokenizer=tokenizer,
    video_processor=Qwen2VLVideoProcessor(**kw),
    chat_template=CHAT_TEMPLATE,
  )


def hf_config(tokenizer, text: dict, vision: dict, tie_word_embeddings: bool = False):
  """A `Qwen2_5_VLConfig` for the tokenizer's vocab (rounded up to 64) and its special ids."""
  from transformers import Qwen2_5_VLConfig

  ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
  text = copy.deepcopy(text)
  vision = {**PATCH, **copy.deepcopy(vision)}
  text.setdefault("vocab_size", -(-len(tokenizer) // 64) * 64)
  text.setdefault("bos_token_id", ids["<|endoftext|>"])
  text.setdefault("eos_token_id", ids["<|im_end|>"])
  text.setdefault("pad_token_id", ids["<|endoftext|>"])
  vision.setdefault("out_hidden_size", text["hidden_size"])
  config = Qwen2_5_VLConfig(
    text_config=text,
    vision_config=vision,
    image_token_id=ids["<|image_pad|>"],
    video_token_id=ids["<|video_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"],
    vision_end_token_id=ids["<|vision_end|>"],
    tie_word_embeddings=tie_word_embeddings,
    bos_token_id=ids["<|endoftext|>"],
    eos_token_id=ids["<|im_end|>"],
    pad_token_id=ids["<|endoftext|>"],
  )
  # transformers 5 keeps mrope_section in text_config.rope_parameters; a dropped one would
  # silently fall back to [16, 24, 24].
  want = (text.get("rope_parameters") or {}).get("mrope_section")
  got = config.text_config.rope_parameters.get("mrope_section")
  if want is not None and list(got or []) != list(want):
    raise ValueError(f"mrope_section not applied: {got} != {want}")
  head_dim = config.text_config.hidden_size // config.text_config.num_attention_heads
  if got is None or sum(got) != head_dim // 2:
    raise ValueError(f"mrope_section {got} must sum to head_dim/2 = {head_dim // 2}")
  return config


def fan_in_init_(model, seed: int) -> None:
  """Every matrix (embeddings and convolutions included) ~ N(0, 1/fan_in), biases 0, norm
  weights 1. Qwen's own init (N(0, 0.02) everywhere) leaves a tiny model's vision features so
  small that gradients barely reach the vision tower: trained from scratch it never learns
  to see (colour stays at chance after 300 supervised steps); with fan-in scaling it does."""
  import torch

  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        fan_in = int(torch.tensor(p.shape[1:]).prod())
        p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)
      elif name.endswith(".bias"):
        p.zero_()
      else:  # RMSNorm weights
        p.fill_(1.0)


def checkpoint_once(
  out_dir: str | pathlib.Path, scratch_cfg, corpus: Callable[[], Sequence[str]]
) -> pathlib.Path:
  """`new_checkpoint` from a config's `model.scratch` block (text, vision, vocab_size, seed,
  min/max pixels) into `out_dir`, unless one is there already (a resumed run keeps its init);
  `corpus()` is called only when it is built."""
  out = pathlib.Path(out_dir)
  if not (out / "config.json").is_file():
    s = scratch_cfg
    new_checkpoint(
      out, corpus=corpus(), text=s.text.to_dict(), vision=s.vision.to_dict(), vocab_size=s.vocab_size,
      seed=s.seed, min_pixels=s.min_pixels, max_pixels=s.max_pixels,
    )  # fmt: skip
  return out


def new_checkpoint(
  out_dir: str | pathlib.Path,
  *,
  corpus: Sequence[str],
  text: dict,
  vision: dict,
  vocab_size: int = 512,
  seed: int = 0,
  min_pixels: int = 56 * 56,
  max_pixels: int = 112 * 112,
  tie_word_embeddings: bool = False,
) -> pathlib.Path:
  """Write a freshly initialised float32 checkpoint (see `fan_in_init_`) with its tokenizer
  and processor into `out_dir`. Same arguments -> identical files."""
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tokenizer = build_tokenizer(corpus, vocab_size)
  build_processor(tokenizer, vision, min_pixels, max_pixels).save_pretrained(out)
  torch.manual_seed(seed)
  model = Qwen2_5_VLForConditionalGeneration(hf_config(tokenizer, text, vision, tie_word_embeddings))
  fan_in_init_(model.to(torch.float32), seed)
  model.save_pretrained(out)
  return out
