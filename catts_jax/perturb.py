"""Seeded image perturbations with a strength in [0, 1].

CDRL training pairs every image with a perturbed copy, the CA-TTS visual self-check contrasts
logits under original and VCD-noised input, and the probe sweeps strengths to check that
confidence falls as the image degrades. All three need perturbations that are pure (same
image, kind, strength, seed and regions -> the same bytes), leave the image alone at strength
0 and distort it more as strength grows. Kinds, and what strength 1 means for each:

- `noise`: additive Gaussian pixel noise, sigma = strength * 128 on the 0-255 scale, rounded
  and clipped. One seeded eps is scaled by strength, so every pixel's error grows with it.
- `vcd_noise`: VCD's forward diffusion (Leng et al. 2024) on the image scaled to [-1, 1], at
  step `vcd_step(strength)`, then back to 0-255 (rounded, clipped). Strength 1 is t = 999,
  where abar ~= 0.081: x_t ~= 0.29 * x0 + 0.96 * eps, mostly noise with a faint image left.
- `occlusion`: the image is cut into a grid of square patches (side ceil(short side / 8)) and
  ceil(strength * cells) of them, the prefix of one seeded permutation, are filled with grey
  (128). A higher strength covers a superset of the cells, so distortion is monotone.
  Strength 1 makes the whole image grey.
- `mosaic`: pixelation: block means over b x b blocks, repeated back to full size (partial
  edge blocks average only their own pixels). b = round(B ** strength), at least 2 for any
  strength > 0, with B = max(2, short side // 8); strength 1 leaves about 8 blocks across the
  short side. Deterministic; the seed is ignored.
- `viewpoint`: a perspective warp. Each corner moves inward by strength * 0.3 * u of the
  width / height, u ~ U(0.25, 1) drawn per corner and axis from the seed; the image is mapped
  onto that quadrilateral (bilinear) and the area outside it is black. Not grey: once the
  content is misaligned, a grey border can sit closer to the original than shifted texture
  does, and the growing border would then lower the distortion instead of raising it.
- `blur`: Gaussian blur (PIL `GaussianBlur`) with radius strength * max(1, short side / 16).
  Deterministic; the seed is ignored.

Input in any PIL mode is converted to RGB first by the project's one converter,
`catts_jax.images.to_rgb` (its module docstring has the rules): EXIF orientation applied,
alpha (RGBA, LA, La, PA, RGBa, a transparency key) composited over white as transformers does,
16-bit and 32-bit integer greyscale scaled from 0-65535 to 0-255, float greyscale read on the
0-255 scale and clipped, everything else through PIL's `convert("RGB")`.

`regions` (a bool mask [H, W], e.g. from `boxes_to_mask` on key regions) targets the
perturbation: the whole image is perturbed, then only pixels inside the mask take the
perturbed values; pixels outside keep the (RGB-converted) input exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from catts_jax.images import to_rgb

if TYPE_CHECKING:
  import jax

KINDS: tuple[str, ...] = ("noise", "vcd_noise", "occlusion", "mosaic", "viewpoint", "blur")
VCD_STEPS = 1000

NOISE_MAX_SIGMA = 128.0  # 0-255 scale
OCCLUSION_GRID = 8  # patches across the short side
MOSAIC_BLOCKS = 8  # blocks across the short side at strength 1
VIEWPOINT_MAX_SHIFT = 0.3  # fraction of width / height a corner moves at strength 1
BLUR_RADIUS_DIVISOR = 16  # radius at strength 1 = short side / this
OCCLUSION_FILL = (128, 128, 128)
VIEWPOINT_FILL = (0, 0, 0)


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown perturbation kind {kind!r}; expected one of {KINDS}")


def _check_strength(strength: float) -> float:
  try:
    s = float(strength)
  except (TypeError, ValueError) as e:
    raise ValueError(f"strength must be a number in [0, 1], got {strength!r}") from e
  if not 0.0 <= s <= 1.0:  # also rejects NaN
    raise ValueError(f"strength must be in [0, 1], got {strength!r}")
  return s


def _check_regions(regions: np.ndarray | None, height: int, width: int) -> np.ndarray | None:
  if regions is None:
    return None
  m = np.asarray(regions)
  if m.shape != (height, width):
    raise ValueError(f"regions must be a mask of shape {(height, width)}, got {m.shape}")
  if m.dtype != np.bool_:
    if not np.issubdtype(m.dtype, np.integer) or not np.isin(m, (0, 1)).all():
      raise ValueError(f"regions must be a bool (or 0/1 integer) mask, got dtype {m.dtype}")
    m = m.astype(bool)
  return m


def boxes_to_mask(boxes: Sequence[tuple[int, int, int, int]], height: int, width: int) -> np.ndarray:
  """Bool mask [height, width], True inside any box (x0, y0, x1, y1), x1 / y1 exclusive.

  Boxes are clipped to the image; float coordinates cover every pixel they touch (floor of
  x0 / y0, ceil of x1 / y1); empty or inverted boxes mark nothing."""
  mask = np.zeros((height, width), dtype=bool)
  for box in boxes:
    if len(box) != 4:
      raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    x0, y0 = (max(0, math.floor(v)) for v in box[:2])
    x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if x1 > x0 and y1 > y0:
      mask[y0:y1, x0:x1] = True
  return mask


@functools.lru_cache(maxsize=8)
def _alphas_cumprod(steps: int) -> np.ndarray:
  betas = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, steps))) * (5e-3 - 1e-5) + 1e-5
  abar = np.cumprod(1.0 - betas)
  abar.flags.writeable = False
  return abar


def vcd_alphas_cumprod(steps: int = VCD_STEPS) -> np.ndarray:
  """abar_t = prod_{s <= t} (1 - beta_s), float64 [steps]: VCD's sigmoid beta schedule.

  For 1000 steps abar falls from 0.99998 (t = 0) through 0.745 (t = 500) to 0.0812 (t = 999)."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  return _alphas_cumprod(int(steps)).copy()


def vcd_step(strength: float, steps: int = VCD_STEPS) -> int:
  """Diffusion step for a strength: t = round-half-up(strength * (steps - 1)).

  Strength 0 maps to t = 0, which is still one small diffusion step (std ~0.0047 on [-1, 1]);
  `perturb` returns the input untouched at strength 0 instead of calling this."""
  s = _check_strength(strength)
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  return int(math.floor(s * (steps - 1) + 0.5))


def vcd_noise_array(x0: np.ndarray | jax.Array, t: int, *, seed: int = 0) -> np.ndarray:
  """x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps, eps = default_rng(seed).standard_normal(shape).

  Works on any float array (normalised processor patches [P, 1176], images in [-1, 1], any
  leading batch shape): eps is drawn once for the whole array, so a batch gets independent
  noise per element but differs from separate per-item calls with the same seed. Computed in
  float64; returned in x0's float dtype (float64 for integer input)."""
  x = np.asarray(x0)
  abar = _alphas_cumprod(VCD_STEPS)
  if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < len(abar):
    raise ValueError(f"t must be an integer step in [0, {len(abar) - 1}], got {t!r}")
  eps = np.random.default_rng(seed).standard_normal(x.shape)
  a = abar[int(t)]
  xt = math.sqrt(a) * x.astype(np.float64) + math.sqrt(1.0 - a) * eps
  float_out = x.dtype.kind == "f" or x.dtype.name == "bfloat16"
  return xt.astype(x.dtype if float_out else np.float64)


def _to_u8(a: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _noise(x: np.ndarray, s: float, seed: int) -> np.ndarray:
  eps = np.random.default_rng(seed).standard_normal(x.shape)
  return _to_u8(x + s * NOISE_MAX_SIGMA * eps)


def _vcd_noise(x: np.ndarray, s: float, seed: int) -> np.ndarray:
  xt = vcd_noise_array(x.astype(np.float64) / 127.5 - 1.0, vcd_step(s), seed=seed)
  return _to_u8((xt + 1.0) * 127.5)


def _occlusion(x: np.ndarray, s: float, seed: int) -> np.ndarray:
  h, w = x.shape[:2]
  patch = max(1, math.ceil(min(h, w) / OCCLUSION_GRID))
  rows, cols = math.ceil(h / patch), math.ceil(w / patch)
  cells = np.random.default_rng(seed).permutation(rows * cols)[: math.ceil(s * rows * cols)]
  out = x.copy()
  for c in cells:
    r, q = divmod(int(c), cols)
    out[r * patch : (r + 1) * patch, q * patch : (q + 1) * patch] = OCCLUSION_FILL
  return out


def _mosaic_block(s: float, h: int, w: int) -> int:
  biggest = max(2, min(h, w) // MOSAIC_BLOCKS)
  return max(2, int(math.floor(biggest**s + 0.5)))


def _mosaic(x: np.ndarray, s: float, seed: int) -> np.ndarray:
  del seed  # deterministic
  h, w = x.shape[:2]
  b = _mosaic_block(s, h, w)
  hb, wb = math.ceil(h / b), math.ceil(w / b)
  padded = np.zeros((hb * b, wb * b, 3), np.float64)
  padded[:h, :w] = x
  counts = np.zeros((hb * b, wb * b, 1), np.float64)
  counts[:h, :w] = 1.0
  sums = padded.reshape(hb, b, wb, b, 3).sum(axis=(1, 3))
  means = sums / counts.reshape(hb, b, wb, b, 1).sum(axis=(1, 3))
  return _to_u8(means).repeat(b, axis=0).repeat(b, axis=1)[:h, :w]


def _homography(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
  """PIL PERSPECTIVE coefficients (a..h) mapping output points `dst` to input points `src`:
  x_in = (a x + b y + c) / (g x + h y + 1), y_in = (d x + e y + f) / (g x + h y + 1)."""
  rows, rhs = [], []
  for (xi, yi), (xo, yo) in zip(src, dst):
    rows.append([xo, yo, 1, 0, 0, 0, -xo * xi, -yo * xi])
    rows.append([0, 0, 0, xo, yo, 1, -xo * yi, -yo * yi])
    rhs += [xi, yi]
  return tuple(float(c) for c in np.linalg.solve(np.array(rows, np.float64), np.array(rhs, np.float64)))


def _viewpoint(x: np.ndarray, s: float, seed: int) -> np.ndarray:
  h, w = x.shape[:2]
  src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
  inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64)
  u = np.random.default_rng(seed).uniform(0.25, 1.0, size=(4, 2))
  dst = src + inward * u * s * VIEWPOINT_MAX_SHIFT * np.array([w, h], np.float64)
  coeffs = _homography(src, dst)
  out = Image.fromarray(x, "RGB").transform(
    (w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=VIEWPOINT_FILL
  )
  return np.asarray(out)


def _blur(x: np.ndarray, s: float, seed: int) -> np.ndarray:
  del seed  # deterministic
  radius = s * max(1.0, min(x.shape[:2]) / BLUR_RADIUS_DIVISOR)
  return np.asarray(Image.fromarray(x, "RGB").filter(ImageFilter.GaussianBlur(radius)))


_KIND_FNS = {
  "noise": _noise,
  "vcd_noise": _vcd_noise,
  "occlusion": _occlusion,
  "mosaic": _mosaic,
  "viewpoint": _viewpoint,
  "blur": _blur,
}


def perturb(
  image: Image.Image, kind: str, strength: float, *, seed: int = 0, regions: np.ndarray | None = None
) -> Image.Image:
  """A perturbed RGB copy of `image`, same size; see the module docstring for each kind.

  Strength 0 returns the RGB-converted input unchanged; with `regions`, only pixels inside
  the mask change. Raises ValueError for an unknown kind, a strength outside [0, 1] or a mask
  of the wrong shape."""
  _check_kind(kind)
  s = _check_strength(strength)
  rgb = to_rgb(image, name="perturb input")
  if rgb is image:
    rgb = rgb.copy()  # the result is always a new image
  mask = _check_regions(regions, rgb.height, rgb.width)
  if s == 0.0:
    return rgb
  x = np.asarray(rgb)
  out = _KIND_FNS[kind](x, s, int(seed))
  if mask is not None:
    out = np.where(mask[..., None], out, x)
  return Image.fromarray(np.ascontiguousarray(out, dtype=np.uint8), "RGB")


def perturb_batch(
  images: Sequence[Image.Image],
  kind: str,
  strength: float,
  *,
  seed: int = 0,
  regions: Sequence[np.ndarray | None] | None = None,
) -> list[Image.Image]:
  """`perturb` on each image; image i uses seed + i, so a batch's images get different noise
  and image i matches `perturb(images[i], ..., seed=seed + i)`. `regions`: None or one mask
  (or None) per image."""
  _check_kind(kind)
  _check_strength(strength)
  if regions is not None and len(regions) != len(images):
    raise ValueError(f"regions: got {len(regions)} masks for {len(images)} images")
  masks = [None] * len(images) if regions is None else list(regions)
  return [
    perturb(im, kind, strength, seed=seed + i, regions=m) for i, (im, m) in enumerate(zip(images, masks))
  ]
