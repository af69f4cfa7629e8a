"""Key image regions from a CLIP vision transformer's attention (open_clip), to perturb.

Relevance is attention rollout (Abnar & Zuidema, 2020): per layer, the head-averaged
attention plus the residual path, `A' = (A + I) / 2` (rows renormalised), multiplied from
the first layer to the last; a patch's relevance is the CLS row of the product. It depends
on the image only: the question is accepted for a future text-conditioned variant and is
not used now.

The image is resized to the model's input size without cropping, so every patch maps back
to a box of the original image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from catts_jax.images import to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), original-image pixels


def attention_rollout(attentions: Sequence[np.ndarray]) -> np.ndarray:
  """attentions: per layer [heads, N, N] (token 0 = CLS) -> CLS relevance of the N - 1 patches."""
  n = attentions[0].shape[-1]
  rollout = np.eye(n)
  for layer in attentions:
    a = 0.5 * layer.mean(0) + 0.5 * np.eye(n)
    a = a / a.sum(-1, keepdims=True)
    rollout = a @ rollout
  return rollout[0, 1:]


def top_k_boxes(relevance: np.ndarray, k: int, width: int, height: int) -> list[Box]:
  """Boxes of the k most relevant patches of a [grid_h, grid_w] map (ties: lower index first)."""
  gh, gw = relevance.shape
  order = np.argsort(-relevance.ravel(), kind="stable")[:k]
  boxes = []
  for index in order:
    i, j = divmod(int(index), gw)
    boxes.append((j * width // gw, i * height // gh, (j + 1) * width // gw, (i + 1) * height // gh))
  return boxes


def boxes_mask(boxes: Sequence[Box], width: int, height: int) -> np.ndarray:
  mask = np.zeros((height, width), bool)
  for x0, y0, x1, y1 in boxes:
    mask[y0:y1, x0:x1] = True
  return mask


class ClipSaliency:
  """Attention-rollout relevance from an open_clip ViT (any model name; weights optional)."""

  def __init__(self, model, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
    self.model = model.eval()
    self.visual = model.visual
    self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  @classmethod
  def from_pretrained(cls, model_name: str = "ViT-B-32", pretrained: str | None = None) -> ClipSaliency:
    """`pretrained`: an open_clip tag or a local weights file; None = random weights (tests)."""
    import open_clip

    model = open_clip.create_model(model_name, pretrained=pretrained)
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    return cls(model, cfg.get("mean", OPENAI_CLIP_MEAN), cfg.get("std", OPENAI_CLIP_STD))

  def pixels(self, image: Image.Image):
    import torch

    size = self.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    rgb = to_rgb(image, name="saliency input")
    x = np.asarray(rgb.resize((size[1], size[0]), Image.BICUBIC), np.float32) / 255
    x = (x - self.mean) / self.std
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())

  def attentions(self, image: Image.Image) -> list[np.ndarray]:
    """Each layer's attention probabilities [heads, N, N], recomputed from the block's
    attention input (open_clip asks torch for none)."""
    import torch

    maps = []

    def hook(module, args, kwargs, output):
      x = args[0] if args else kwargs["query"]  # [1, N, D], batch first
      d, heads = module.embed_dim, module.num_heads
      q = x @ module.in_proj_weight[:d].T + module.in_proj_bias[:d]
      k = x @ module.in_proj_weight[d : 2 * d].T + module.in_proj_bias[d : 2 * d]
      q = q.reshape(x.shape[1], heads, -1).transpose(0, 1)
      k = k.reshape(x.shape[1], heads, -1).transpose(0, 1)
      a = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1)
      maps.append(a.detach().double().numpy())

    handles = [
      b.attn.register_forward_hook(hook, with_kwargs=True) for b in self.visual.transformer.resblocks
    ]
    try:
      with torch.no_grad():
        self.visual(self.pixels(image))
    finally:
      for h in handles:
        h.remove()
    return maps

  def relevance(self, image: Image.Image, question: str | None = None) -> np.ndarray:
    """[grid_h, grid_w] rollout relevance, scaled so the maximum is 1."""
    del question
    gh, gw = self.visual.grid_size
    r = attention_rollout(self.attentions(image)).reshape(gh, gw)
    return r / r.max()

  def key_regions(self, image: Image.Image, k: int, question: str | None = None) -> list[Box]:
    return top_k_boxes(self.relevance(image, question), k, image.width, image.height)

  def region_mask(self, image: Image.Image, k: int, question: str | None = None) -> np.ndarray:
    """Boolean [H, W] mask of the k key regions, for targeted perturbations."""
    return boxes_mask(self.key_regions(image, k, question), image.width, image.height)
