"""CLIP attention-rollout saliency on a tiny randomly initialised open_clip ViT."""

import numpy as np
import open_clip
import pytest
import torch
from tiny_hf import random_image

from catts_jax.saliency import ClipSaliency, attention_rollout, boxes_mask, top_k_boxes


@pytest.fixture(scope="module")
def saliency():
  torch.manual_seed(0)
  model = open_clip.CLIP(
    embed_dim=32,
    vision_cfg=dict(image_size=64, patch_size=16, width=48, layers=3, head_width=24, mlp_ratio=2.0),
    text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
  )
  return ClipSaliency(model)


def hand_rollout(model, pixels):
  """The ViT forward written out by hand, collecting attention, then rollout with loops."""
  v = model.visual
  with torch.no_grad():
    x = v.conv1(pixels).flatten(2).transpose(1, 2)  # [1, 16, width]
    cls = v.class_embedding.expand(1, 1, -1)
    x = torch.cat([cls, x], 1) + v.positional_embedding
    x = v.ln_pre(x)
    layers = []
    for block in v.transformer.resblocks:
      h = block.ln_1(x)[0]
      attn = block.attn
      d, heads = attn.embed_dim, attn.num_heads
      w, b = attn.in_proj_weight, attn.in_proj_bias
      q = (h @ w[:d].T + b[:d]).reshape(-1, heads, d // heads)
      k = (h @ w[d : 2 * d].T + b[d : 2 * d]).reshape(-1, heads, d // heads)
      probs = np.zeros((heads, h.shape[0], h.shape[0]))
      for head in range(heads):
        scores = (q[:, head] @ k[:, head].T / (d // heads) ** 0.5).numpy().astype(np.float64)
        e = np.exp(scores - scores.max(-1, keepdims=True))
        probs[head] = e / e.sum(-1, keepdims=True)
      layers.append(probs)
      x = block(x)
  n = layers[0].shape[-1]
  result = np.eye(n)
  for probs in layers:
    a = np.zeros((n, n))
    for i in range(n):
      row = probs[:, i].mean(0) * 0.5
      row[i] += 0.5
      a[i] = row / row.sum()
    result = a @ result
  return result[0, 1:]


def test_relevance_equals_hand_computed_rollout(saliency):
  image = random_image(np.random.default_rng(0), 90, 70)
  want = hand_rollout(saliency.model, saliency.pixels(image)).reshape(4, 4)
  got = saliency.relevance(image, "how many?")
  np.testing.assert_allclose(got, want / want.max(), rtol=1e-5, atol=1e-6)
  assert got.shape == (4, 4) and got.max() == 1.0 and len(np.unique(got)) > 4


def test_rollout_of_identity_attention_is_uniform_over_cls():
  n = 5
  eye = np.eye(n)[None].repeat(2, 0)
  np.testing.assert_allclose(attention_rollout([eye, eye]), np.zeros(n - 1))
  uniform = np.full((2, n, n), 1 / n)
  r = attention_rollout([uniform])
  np.testing.assert_allclose(r, np.full(n - 1, 0.5 / n))


def test_targeted_mask_covers_exactly_top_k(saliency):
  image = random_image(np.random.default_rng(1), 100, 80)  # 4x4 grid of 25x20-pixel patches
  relevance = saliency.relevance(image)
  k = 3
  mask = saliency.region_mask(image, k)
  top = np.argsort(-relevance.ravel(), kind="stable")[:k]
  expected = np.zeros((80, 100), bool)
  for index in top:
    i, j = divmod(int(index), 4)
    expected[i * 20 : (i + 1) * 20, j * 25 : (j + 1) * 25] = True
  np.testing.assert_array_equal(mask, expected)
  assert mask.sum() == k * 25 * 20


def test_boxes_tile_odd_sizes():
  """On a size the grid does not divide, patch boxes still tile the image exactly once."""
  relevance = np.arange(16, dtype=float).reshape(4, 4)
  boxes = top_k_boxes(relevance, 16, 37, 53)
  cover = np.zeros((53, 37), int)
  for x0, y0, x1, y1 in boxes:
    cover[y0:y1, x0:x1] += 1
  assert (cover == 1).all()
  assert boxes[0] == (27, 39, 37, 53)  # the most relevant patch is the last one
  assert boxes_mask(boxes[:1], 37, 53).sum() == 10 * 14
