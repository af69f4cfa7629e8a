"""Prompts + images -> static-shape numpy batches for the jitted model.

The HF processor from the checkpoint directory does tokenisation, the chat template and
image patching. We then left-pad sequences and pad the patch list to bucket sizes, so the
number of distinct shapes (and so of jit compilations) stays small, and compute the
M-RoPE positions and per-patch (row, col, image) metadata on the host.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from catts_jax.models.qwen2_5_vl.config import ModelConfig
from catts_jax.models.qwen2_5_vl.model import get_rope_index

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def power_of_two_buckets(smallest: int, largest: int) -> tuple[int, ...]:
  sizes, n = [], smallest
  while n < largest:
    sizes.append(n)
    n *= 2
  return (*sizes, largest)


def bucket(n: int, buckets: Sequence[int], what: str) -> int:
  for b in buckets:
    if n <= b:
      return b
  raise ValueError(f"{what}: {n} exceeds the largest bucket {buckets[-1]}")


def load_image(image: Image.Image | str | pathlib.Path) -> Image.Image:
  """An RGB PIL image from a PIL image or a path; errors name the file."""
  if isinstance(image, Image.Image):
    return image if image.mode == "RGB" else image.convert("RGB")
  try:
    with Image.open(image) as im:
      return im.convert("RGB")
  except (OSError, ValueError) as e:
    raise ValueError(f"{image}: cannot read image ({e})") from e


@dataclasses.dataclass
class Batch:
  """Numpy arrays ready for `Qwen2_5_VL.__call__` (see `model_inputs`)."""

  input_ids: np.ndarray  # [B, T] int32, left-padded
  attention_mask: np.ndarray  # [B, T] int32
  positions: np.ndarray  # [3, B, T] int32
  rope_deltas: np.ndarray  # [B] int32
  pixel_values: np.ndarray | None  # [P, C*T*p*p] float32, zero-padded to a bucket
  patch_pos: np.ndarray | None  # [P, 2] int32 (row, col) within its image
  patch_image: np.ndarray | None  # [P] int32 image index, -1 for padding
  image_grid_thw: np.ndarray | None  # [num_images, 3]

  def model_inputs(self) -> dict[str, np.ndarray]:
    out = dict(input_ids=self.input_ids, positions=self.positions, attention_mask=self.attention_mask)
    if self.pixel_values is not None:
      out.update(pixel_values=self.pixel_values, patch_pos=self.patch_pos, patch_image=self.patch_image)
    return out


def patch_metadata(grid_thw: np.ndarray, merge: int) -> tuple[np.ndarray, np.ndarray]:
  """(row, col) of every patch in the processor's order (2x2 merge blocks, row-major) and
  the index of the image (frame) it belongs to."""
  pos, image = [], []
  frame = 0
  for t, h, w in np.asarray(grid_thw).tolist():
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = (h // merge, merge, w // merge, merge)
    rows = rows.reshape(block).transpose(0, 2, 1, 3).ravel()
    cols = cols.reshape(block).transpose(0, 2, 1, 3).ravel()
    for _ in range(t):
      pos.append(np.stack([rows, cols], -1))
      image.append(np.full(h * w, frame))
      frame += 1
  return np.concatenate(pos).astype(np.int32), np.concatenate(image).astype(np.int32)


class Processor:
  """Wraps the checkpoint's HF `AutoProcessor` and produces bucketed `Batch`es."""

  def __init__(
    self,
    path: str | pathlib.Path,
    cfg: ModelConfig | None = None,
    *,
    seq_buckets: Sequence[int] | None = None,
    patch_buckets: Sequence[int] | None = None,
  ):
    from transformers import AutoProcessor  # heavy import, only when a processor is built

    self.path = pathlib.Path(path)
    self.cfg = cfg or ModelConfig.from_pretrained(self.path)
    self.hf = AutoProcessor.from_pretrained(self.path)
    self.tokenizer = self.hf.tokenizer
    self.tokenizer.padding_side = "left"  # generation appends on the right
    self.seq_buckets = tuple(seq_buckets or power_of_two_buckets(32, self.cfg.text.max_position_embeddings))
    self.patch_buckets = tuple(patch_buckets or power_of_two_buckets(64, 1 << 20))
    self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

  def chat_prompt(self, question: str, num_images: int = 0, system: str | None = None) -> str:
    """A user turn with the images first, rendered with the checkpoint's chat template."""
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if system is not None:
      messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

  def __call__(self, prompts: Sequence[str], images: Sequence[Sequence] | None = None) -> Batch:
    """prompts: rendered text, each holding one IMAGE_PLACEHOLDER per image of that prompt.
    images: per prompt, a list of PIL images or paths."""
    images = images or [[] for _ in prompts]
    if len(images) != len(prompts):
      raise ValueError(f"{len(prompts)} prompts but {len(images)} image lists")
    flat_images = []
    for i, (prompt, imgs) in enumerate(zip(prompts, images)):
      n = prompt.count("<|image_pad|>")
      if n != len(imgs):
        raise ValueError(f"prompt {i}: {n} image placeholders but {len(imgs)} images")
      flat_images += [load_image(im) for im in imgs]

    kwargs = dict(text=list(prompts), return_tensors="np", padding=True)
    if flat_images:
      kwargs["images"] = flat_images
    enc = self.hf(**kwargs)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lengths = mask.sum(1)
    for i, n in enumerate(lengths):
      bucket(int(n), self.seq_buckets, f"prompt {i} length in tokens")
    length = bucket(ids.shape[1], self.seq_buckets, "batch length in tokens")
    pad = length - ids.shape[1]
    ids = np.pad(ids, ((0, 0), (pad, 0)), constant_values=self.pad_id).astype(np.int32)
    mask = np.pad(mask, ((0, 0), (pad, 0))).astype(np.int32)

    grid = enc.get("image_grid_thw") if flat_images else None
    positions, deltas = get_rope_index(
      ids,
      mask,
      grid,
      image_token_id=self.cfg.image_token_id,
      spatial_merge_size=self.cfg.vision.spatial_merge_size,
    )
    pixels = patch_pos = patch_image = None
    if grid is not None:
      pixels = np.asarray(enc["pixel_values"], np.float32)
      patch_pos, patch_image = patch_metadata(grid, self.cfg.vision.spatial_merge_size)
      size = bucket(len(pixels), self.patch_buckets, "image patches in batch")
      extra = size - len(pixels)
      pixels = np.pad(pixels, ((0, extra), (0, 0)))
      patch_pos = np.pad(patch_pos, ((0, extra), (0, 0)))
      patch_image = np.pad(patch_image, (0, extra), constant_values=-1)
      grid = np.asarray(grid, np.int32)
    return Batch(ids, mask, positions, deltas, pixels, patch_pos, patch_image, grid)
