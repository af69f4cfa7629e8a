"""Block-local window attention in the vision tower equals the window-masked full form, and
costs a fraction of it."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from catts_jax.models.qwen2_5_vl import presets, stack
from catts_jax.models.qwen2_5_vl.config import ModelConfig, VisionConfig
from catts_jax.models.qwen2_5_vl.layers import attention
from catts_jax.models.qwen2_5_vl.vision import VisionTransformer, vision_cos_sin, window_attention
from catts_jax.processing import patch_metadata


def slots(grids, slot_size, pad_slots, patch_dim, seed=0):
  """Images of (rows, cols) patches, one a slot, plus all-padding slots: pixels, pos, image."""
  n = len(grids) + pad_slots
  pixels = np.zeros((n, slot_size, patch_dim), np.float32)
  pos = np.zeros((n, slot_size, 2), np.int32)
  image = np.full((n, slot_size), -1, np.int32)
  rng = np.random.default_rng(seed)
  for i, (h, w) in enumerate(grids):
    p, _ = patch_metadata(np.array([[1, h, w]]), 2)
    pixels[i, : h * w] = rng.normal(size=(h * w, patch_dim))
    pos[i, : h * w], image[i, : h * w] = p, i
  return jnp.asarray(pixels), jnp.asarray(pos), jnp.asarray(image)


def masked_tower(tower, pixel_values, patch_pos, patch_image):
  """The tower in slot order, every window block full slot x slot under a window mask."""
  cfg = tower.cfg
  cos, sin = vision_cos_sin(patch_pos, cfg)
  window = patch_pos // cfg.window_patches
  same_image = patch_image[:, :, None] == patch_image[:, None, :]
  same_window = jnp.all(window[:, :, None, :] == window[:, None, :, :], axis=-1)
  full, windowed = same_image[:, None], (same_image & same_window)[:, None]
  x = tower.patch_embed(pixel_values)
  for i, block in enumerate(stack.unstack(tower.blocks)):
    x = block(x, cos, sin, mask=full if i in cfg.fullatt_block_indexes else windowed)
  return tower.merger(x)


def tower(window_size, remat=False, scan_layers=True):
  """A 3-block tower (block 1 full) with random params, biases and norms included, built
  abstractly and filled from numpy (faster than initialising under jax)."""
  vision = VisionConfig(
    depth=3,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=48,
    window_size=window_size,
    fullatt_block_indexes=(1,),
  )
  cfg = ModelConfig(vision=vision, remat=remat, scan_layers=scan_layers)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(1)
  state = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.2, a.shape), a.dtype), state)
  return nnx.merge(graphdef, state)


# Window 56 px: 4x4 patches (P = 16); 112 px: 8x8 (P = 64). Slots of 100 patches (not whole
# blocks) and two all-padding slots; windows cut by image edges, and windows that straddle two
# blocks (6x14 patches at P = 64: windows of 48 and 36).
@pytest.mark.parametrize("window_size", [56, 112])
def test_window_blocks_equal_the_masked_form(window_size):
  model = tower(window_size)
  grids = [(6, 14), (8, 12), (2, 14), (10, 6), (4, 6), (2, 2)]
  pixels, pos, image = slots(grids, 100, 2, model.cfg.patch_dim)
  got = np.asarray(nnx.jit(lambda m, *a: m(*a))(model, pixels, pos, image))
  want = np.asarray(jax.jit(lambda *a: masked_tower(model, *a))(pixels, pos, image))
  real = np.asarray(image[:, ::4] >= 0).ravel()
  assert got.shape == want.shape == (8 * 100 // 4, 48)
  assert np.isfinite(got).all()
  err = np.abs(got[real] - want[real]).max()
  print(f"window {window_size}: max |windowed - masked| = {err:.2e}, max |masked| = {np.abs(want).max():.2f}")
  assert err <= 1e-5
  # The blocks as straight-line code (each block's form chosen while tracing) equal the scan
  # (the form chosen by a flag per block).
  unrolled = nnx.merge(*nnx.split(tower(window_size, scan_layers=False)))
  nnx.update(unrolled, nnx.state(model))
  straight = np.asarray(nnx.jit(lambda m, *a: m(*a))(unrolled, pixels, pos, image))
  np.testing.assert_allclose(straight[real], got[real], atol=1e-6, rtol=0)


def remats(jaxpr) -> int:
  """Rematerialised calls in a jaxpr, those inside a scan's body included."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "remat2"
    count += sum(remats(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
  return count


@pytest.mark.parametrize("scan_layers, per_block", [(True, 1), (False, 3)])
def test_remat_wraps_each_block(scan_layers, per_block):
  """cfg.remat: every block's call is rematerialised (the scanned block body once; unrolled,
  one remat per block)."""
  pixels, pos, image = slots([(6, 10), (4, 6)], 64, 1, tower(56).cfg.patch_dim)
  for remat, count in ((False, 0), (True, per_block)):
    graphdef, state = nnx.split(tower(56, remat, scan_layers))
    encode = lambda s, x, g=graphdef: nnx.merge(g, s)(x, pos, image)  # noqa: E731
    assert remats(jax.make_jaxpr(encode)(state, pixels).jaxpr) == count


def flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])


def test_flops_fall_at_the_real_shape():
  """The 7B tower (hidden 1280, 16 heads of 80, 8x8-patch windows, 32 blocks, 4 full), one slot
  of 1024 patches: window attention costs >= 4x less than the masked slot x slot form, and the
  tower saves that in each of its 28 window blocks. (The projections and MLP, ~88% of the
  masked tower's FLOPs at this size, are unchanged.)"""
  # Unrolled blocks: XLA's cost analysis counts a scanned body once.
  cfg = presets.resolve({"preset": "7b", "dtype": "float32", "scan_layers": False})
  v, size = cfg.vision, 1024
  qkv = jax.ShapeDtypeStruct((1, size, v.num_heads, v.head_dim), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, size), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 1, size, size), bool)
  windowed = flops(lambda q, k, v_, s: window_attention(q, k, v_, s, v.window_patches**2), qkv, qkv, qkv, ids)
  masked = flops(
    lambda q, k, v_, m: attention(q, k.transpose(0, 2, 3, 1), v_.transpose(0, 2, 1, 3), m),
    qkv,
    qkv,
    qkv,
    mask,
  )
  print(f"\nattention FLOPs, 1 slot x {size} patches: masked {masked:.4e}, windowed {windowed:.4e}")
  assert masked >= 4 * windowed

  graphdef, state = nnx.split(nnx.eval_shape(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0))))
  inputs = [
    jax.ShapeDtypeStruct((1, size, *d), t)
    for d, t in (((v.patch_dim,), jnp.float32), ((2,), jnp.int32), ((), jnp.int32))
  ]
  tower_windowed = flops(lambda s, *a: nnx.merge(graphdef, s)(*a), state, *inputs)
  tower_masked = flops(lambda s, *a: masked_tower(nnx.merge(graphdef, s), *a), state, *inputs)
  print(f"tower FLOPs: masked {tower_masked:.4e}, windowed {tower_windowed:.4e}")
  window_blocks = v.depth - len(v.fullatt_block_indexes)
  assert tower_masked - tower_windowed == pytest.approx(window_blocks * (masked - windowed), rel=0.05)
