"""Image perturbations: identity at strength 0, monotone distortion, determinism, any PIL mode,
targeted regions, and VCD's forward-diffusion closed form against a plain-numpy reference."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from catts_jax import perturb as P

RANDOM_KINDS = ("noise", "vcd_noise", "occlusion", "viewpoint")
DETERMINISTIC_KINDS = ("mosaic", "blur")
MODES = (
  "1",
  "L",
  "LA",
  "La",
  "P",
  "PA",
  "RGB",
  "RGBA",
  "RGBa",
  "RGBX",
  "CMYK",
  "YCbCr",
  "HSV",
  "I",
  "I;16",
  "I;16B",
  "F",
)


def textured(h: int = 96, w: int = 128, seed: int = 0) -> Image.Image:
  """Gradients + a sine texture + random discs + pixel noise, so every kind has something to destroy."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  img = np.stack([x / w * 255, y / h * 255, (x + y) / (h + w) * 255], -1)
  img += 60 * np.sin(x / 3.0)[..., None] * np.cos(y / 5.0)[..., None]
  for _ in range(12):
    cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 20)
    img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
  img += rng.normal(0, 20, img.shape)
  return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def in_mode(image: Image.Image, mode: str) -> Image.Image:
  rgb = np.asarray(image)
  if mode in ("I;16", "I;16B", "I"):  # PIL's convert() into I;16B clips at 255, so build from arrays
    grey = rgb.mean(-1).astype(np.uint32) * 257
    return Image.fromarray(grey.astype({"I;16": "<u2", "I;16B": ">u2", "I": np.int32}[mode]))
  if mode == "F":
    return Image.fromarray(rgb.mean(-1).astype(np.float32), "F")
  if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
    alpha = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)[None, :].repeat(rgb.shape[0], 0)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    return rgba.convert("LA").convert(mode) if mode in ("La", "PA") else rgba.convert(mode)
  return image.convert(mode)


def psnr(a: Image.Image, b: Image.Image) -> float:
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  return 10 * math.log10(255**2 / mse)


def arr(image: Image.Image) -> np.ndarray:
  return np.asarray(image).astype(np.int64)


@pytest.mark.parametrize("kind", P.KINDS)
def test_strength_zero_is_identity(kind):
  im = textured()
  out = P.perturb(im, kind, 0.0, seed=5)
  assert out.mode == "RGB" and out.size == im.size and out.tobytes() == im.tobytes()
  assert out is not im
  grey = im.convert("L")
  assert P.perturb(grey, kind, 0, regions=np.ones((96, 128), bool)).tobytes() == grey.convert("RGB").tobytes()


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_distortion_grows_with_strength(kind, seed):
  im = textured(seed=seed)
  values = [psnr(im, P.perturb(im, kind, s, seed=seed)) for s in (0.25, 0.5, 0.75, 1.0)]
  assert all(a > b for a, b in zip(values, values[1:])), values
  assert values[0] < 30, values  # 0.25 is a visible perturbation, not a rounding error


@pytest.mark.parametrize("kind", P.KINDS)
def test_same_seed_same_bytes(kind):
  im = textured()
  a = P.perturb(im, kind, 0.6, seed=11).tobytes()
  assert P.perturb(im.copy(), kind, 0.6, seed=11).tobytes() == a
  other = P.perturb(im, kind, 0.6, seed=12).tobytes()
  if kind in RANDOM_KINDS:
    assert other != a
  else:
    assert other == a  # documented: the seed is ignored
  assert P.perturb(im, kind, 0.6, seed=11).tobytes() != im.tobytes()


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_any_mode_odd_size_comes_out_rgb(kind, mode):
  im = in_mode(textured(37, 53), mode)
  assert im.mode == mode and im.size == (53, 37)
  for s in (0.0, 0.3, 1.0):
    out = P.perturb(im, kind, s, seed=2)
    assert out.mode == "RGB" and out.size == (53, 37)


def test_alpha_composited_over_white():
  rgba = np.zeros((2, 3, 4), np.uint8)
  rgba[..., :3] = (200, 40, 0)
  rgba[..., 3] = [[0, 255, 128], [0, 255, 128]]
  out = arr(P.perturb(Image.fromarray(rgba, "RGBA"), "blur", 0))
  np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent -> white, not black
  np.testing.assert_array_equal(out[0, 1], [200, 40, 0])
  np.testing.assert_array_equal(out[0, 2], [227, 147, 127])  # round((c * 128 + 255 * 127) / 255)
  la = Image.fromarray(np.array([[[10, 0], [10, 255]]], np.uint8), "LA")
  np.testing.assert_array_equal(arr(P.perturb(la, "noise", 0))[0], [[255] * 3, [10] * 3])
  pal = Image.new("P", (2, 1))
  pal.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
  pal.putpixel((1, 0), 1)
  pal.info["transparency"] = 0
  np.testing.assert_array_equal(arr(P.perturb(pal, "noise", 0))[0], [[255] * 3, [9] * 3])


def test_high_bit_depth_is_scaled_not_clipped():
  values = np.array([[0, 257 * 100, 65535]], np.uint16)
  for im in (Image.fromarray(values), Image.fromarray(values.astype(">u2"))):
    assert im.mode in ("I;16", "I;16B")
    np.testing.assert_array_equal(arr(P.perturb(im, "mosaic", 0))[0, :, 0], [0, 100, 255])
  i32 = Image.fromarray(np.array([[-5, 257 * 100, 99999]], np.int32))
  np.testing.assert_array_equal(arr(P.perturb(i32, "mosaic", 0))[0, :, 0], [0, 100, 255])
  f = Image.fromarray(np.array([[-3.0, 100.6, 300.0]], np.float32), "F")
  np.testing.assert_array_equal(arr(P.perturb(f, "mosaic", 0))[0, :, 0], [0, 101, 255])


@pytest.mark.parametrize("kind", P.KINDS)
def test_regions_limit_the_change(kind):
  im = textured()
  mask = P.boxes_to_mask([(10, 20, 60, 70), (100, 0, 128, 30)], 96, 128)
  out, orig = arr(P.perturb(im, kind, 1.0, seed=3, regions=mask)), arr(im)
  np.testing.assert_array_equal(out[~mask], orig[~mask])
  changed = (out != orig).any(-1)
  assert changed[mask].mean() > 0.5, changed[mask].mean()
  batch = P.perturb_batch([im, im], kind, 1.0, seed=3, regions=[mask, None])
  assert batch[0].tobytes() == Image.fromarray(out.astype(np.uint8)).tobytes()
  assert batch[1].tobytes() == P.perturb(im, kind, 1.0, seed=4).tobytes()


def test_boxes_to_mask():
  m = P.boxes_to_mask([(1, 2, 3, 4)], 5, 6)
  assert m.dtype == np.bool_ and m.shape == (5, 6)
  expected = np.zeros((5, 6), bool)
  expected[2:4, 1:3] = True
  np.testing.assert_array_equal(m, expected)
  np.testing.assert_array_equal(P.boxes_to_mask([(-4, -4, 100, 100)], 5, 6), np.ones((5, 6), bool))
  np.testing.assert_array_equal(P.boxes_to_mask([], 5, 6), np.zeros((5, 6), bool))
  np.testing.assert_array_equal(P.boxes_to_mask([(3, 3, 3, 5), (4, 4, 2, 2)], 5, 6), np.zeros((5, 6), bool))
  np.testing.assert_array_equal(
    P.boxes_to_mask([(0.5, 1.2, 2.1, 1.9)], 5, 6), P.boxes_to_mask([(0, 1, 3, 2)], 5, 6)
  )


def test_perturb_batch_uses_seed_plus_index():
  ims = [textured(seed=i) for i in range(3)]
  out = P.perturb_batch(ims, "noise", 0.4, seed=10)
  assert [o.tobytes() for o in out] == [
    P.perturb(im, "noise", 0.4, seed=10 + i).tobytes() for i, im in enumerate(ims)
  ]
  same = P.perturb_batch([ims[0], ims[0]], "noise", 0.4)
  assert same[0].tobytes() != same[1].tobytes()
  assert P.perturb_batch([], "blur", 0.5) == []


def test_errors_name_the_problem():
  im = textured(8, 8)
  with pytest.raises(ValueError, match="'jpeg'"):
    P.perturb(im, "jpeg", 0.5)
  for bad in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match=repr(bad)):
      P.perturb(im, "noise", bad)
  with pytest.raises(ValueError, match="strength"):
    P.perturb(im, "noise", "high")
  with pytest.raises(ValueError, match=r"\(8, 8\)"):
    P.perturb(im, "noise", 0.5, regions=np.ones((8, 9), bool))
  with pytest.raises(ValueError, match="bool"):
    P.perturb(im, "noise", 0.5, regions=np.full((8, 8), 0.5))
  with pytest.raises(ValueError, match="2 masks for 1 images"):
    P.perturb_batch([im], "noise", 0.5, regions=[None, None])
  with pytest.raises(ValueError, match="'blurry'"):
    P.perturb_batch([im], "blurry", 0.5)
  with pytest.raises(ValueError, match="1000"):
    P.vcd_noise_array(np.zeros(3), 1000)
  with pytest.raises(ValueError, match="2"):
    P.vcd_step(2)


def test_noise_sigma_and_occlusion_nesting_and_mosaic_blocks():
  grey = Image.new("RGB", (128, 96), (128, 128, 128))
  resid = arr(P.perturb(grey, "noise", 0.25, seed=0)) - 128
  assert abs(resid.std() - 32) < 1  # sigma = 0.25 * 128, little clipping at this level
  red = Image.new("RGB", (128, 96), (255, 0, 0))
  grey_at = [(arr(P.perturb(red, "occlusion", s, seed=4)) == 128).all(-1) for s in (0.25, 0.5, 1.0)]
  assert not (grey_at[0] & ~grey_at[1]).any() and grey_at[1].sum() > grey_at[0].sum() > 0
  assert grey_at[2].all()
  out = arr(P.perturb(textured(), "mosaic", 1.0))  # block = 96 // 8 = 12
  for r0 in range(0, 96, 12):
    for c0 in range(0, 128, 12):
      assert (out[r0 : r0 + 12, c0 : c0 + 12] == out[r0, c0]).all()


def reference_abar(steps: int = 1000) -> np.ndarray:
  abar, out = 1.0, []
  for i in range(steps):
    z = -6.0 + 12.0 * i / (steps - 1)
    beta = (5e-3 - 1e-5) / (1.0 + math.exp(-z)) + 1e-5
    abar *= 1.0 - beta
    out.append(abar)
  return np.array(out)


def test_vcd_schedule():
  abar = P.vcd_alphas_cumprod()
  assert abar.dtype == np.float64 and abar.shape == (P.VCD_STEPS,)
  np.testing.assert_allclose(abar, reference_abar(), rtol=1e-12)
  assert (np.diff(abar) < 0).all()
  # Measured: 0.9999777 (t=0), 0.7447985 (t=500), 0.0812492 (t=999).
  np.testing.assert_allclose(abar[[0, 500, 999]], [0.9999777, 0.7447985, 0.0812492], atol=1e-7)
  abar[0] = -1  # a copy: the cached schedule is untouched
  assert P.vcd_alphas_cumprod()[0] > 0.99
  assert (P.vcd_step(0), P.vcd_step(0.5), P.vcd_step(1.0), P.vcd_step(0.25)) == (0, 500, 999, 250)
  assert P.vcd_step(1.0, steps=10) == 9


def test_vcd_noise_array_matches_closed_form():
  x0 = np.random.default_rng(0).uniform(-2, 2, (2, 5, 1176)).astype(np.float32)
  abar = reference_abar()
  for t in (0, 137, 999):
    eps = np.random.default_rng(42).standard_normal(x0.shape)
    want = np.sqrt(abar[t]) * x0.astype(np.float64) + np.sqrt(1 - abar[t]) * eps
    got = P.vcd_noise_array(x0, t, seed=42)
    assert got.dtype == np.float32 and got.shape == x0.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(
    P.vcd_noise_array(jnp.asarray(x0), 500, seed=1), P.vcd_noise_array(x0, 500, seed=1)
  )
  assert not np.array_equal(P.vcd_noise_array(x0, 500, seed=1), P.vcd_noise_array(x0, 500, seed=2))
  assert P.vcd_noise_array(np.zeros((3, 4), np.int32), 10).dtype == np.float64
  # perturb's vcd_noise is this closed form on the image scaled to [-1, 1].
  im = textured(16, 16)
  x = np.asarray(im).astype(np.float64) / 127.5 - 1
  want = np.clip(np.rint((P.vcd_noise_array(x, 500, seed=9) + 1) * 127.5), 0, 255)
  np.testing.assert_array_equal(arr(P.perturb(im, "vcd_noise", 0.5, seed=9)), want)


def normal_cdf(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def test_vcd_last_step_is_nearly_standard_normal():
  x0 = np.random.default_rng(1).uniform(-1, 1, 20_000)  # an image's range
  xt = P.vcd_noise_array(x0, 999, seed=3)
  # x_t = 0.285 x0 + 0.959 eps: std sqrt(0.081 / 3 + 0.919) = 0.973, correlation with x0 0.17.
  assert abs(xt.mean()) < 0.03 and 0.95 < xt.std() < 1.0
  assert 0.12 < np.corrcoef(x0, xt)[0, 1] < 0.22
  z = np.sort(xt)
  ks = np.abs(normal_cdf(z) - np.arange(1, z.size + 1) / z.size).max()
  assert ks < 0.03, ks  # vs N(0, 1) itself
  eps = (xt - math.sqrt(0.0812492) * x0) / math.sqrt(1 - 0.0812492)
  z = np.sort((eps - eps.mean()) / eps.std())
  assert np.abs(normal_cdf(z) - np.arange(1, z.size + 1) / z.size).max() < 0.015
  assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1) < 0.02


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
  h=st.integers(1, 20),
  w=st.integers(1, 20),
  mode=st.sampled_from(MODES),
  kind=st.sampled_from(P.KINDS),
  strength=st.floats(0, 1),
  seed=st.integers(0, 2**32),
  masked=st.booleans(),
)
def test_never_raises(h, w, mode, kind, strength, seed, masked):
  im = in_mode(textured(h, w, seed=seed % 7), mode)
  regions = np.random.default_rng(seed).random((h, w)) < 0.5 if masked else None
  out = P.perturb(im, kind, strength, seed=seed, regions=regions)
  assert out.mode == "RGB" and out.size == (w, h)
  if regions is not None:
    base = arr(P.perturb(im, kind, 0))
    np.testing.assert_array_equal(arr(out)[~regions], base[~regions])
