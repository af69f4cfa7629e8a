"""The one way images enter the project: decoded, oriented and converted to 8-bit RGB.

Every path that hands pixels to a model (data decoding, the processor, perturbations, saliency,
the Expert client) goes through `open_image` (paths and encoded bytes) or `to_rgb` (PIL images),
so a file means the same pixels everywhere. The rules:

- EXIF orientation is applied (`PIL.ImageOps.exif_transpose`, which also drops the tag, so
  applying it twice is harmless). An in-memory image that still carries an orientation tag is
  rotated too. Unreadable EXIF data is ignored (the image is kept as stored).
- Alpha is composited over white exactly as transformers' `image_transforms.convert_to_rgb`
  does for PIL images (`convert("RGBA")`, `Image.alpha_composite` over opaque white, then
  `convert("RGB")`): modes with an alpha band (RGBA, LA, PA) and any mode with a
  `transparency` key (P with a transparent index, L, RGB). Two differences, both where
  transformers does not composite: premultiplied alpha (La, RGBa) is composited over white
  too (transformers drops the band, which leaves the colour as if over black), and 16-bit
  greyscale with a transparency key is scaled first (below), then composited.
- 16-bit and 32-bit integer greyscale (I;16, I;16L, I;16B, I;16N, I) is read as 0-65535
  (clipped there) and scaled to 0-255 as round(v / 257) (never a tie), so 65535 -> 255 and
  v * 257 -> v; PIL's own `convert` clips at 255, which turns most 16-bit images white (and
  so does transformers, which calls it). Float greyscale (F) is read on the 0-255 scale,
  NaN as 0, rounded and clipped (PIL's convert clips the same way).
- Everything else (1, L, P, CMYK, YCbCr, HSV, RGBX, ...) goes through PIL's `convert("RGB")`.
- Multi-frame files (GIF, TIFF pages) give their first frame.
- Images of more than `MAX_PIXELS` pixels are refused before they are decoded, and an
  unreadable or truncated file is refused: both raise `ImageError` (a ValueError) with one
  line that names the item (`name`: a file, a problem id, ...).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import ExifTags, Image, ImageOps

# PIL's default Image.MAX_IMAGE_PIXELS (~9459^2): PIL only warns up to twice this, we refuse.
MAX_PIXELS = 89_478_485
WHITE = (255, 255, 255, 255)
_WIDE_GREY = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
  """An image that cannot be used; the message is one line starting with the item's name."""


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_pixels(image: Image.Image, name: str) -> None:
  w, h = image.size
  if w * h > MAX_PIXELS:
    raise ImageError(f"{name}: image of {w}x{h} = {w * h} pixels exceeds the limit of {MAX_PIXELS} pixels")


def _orientation(image: Image.Image) -> int:
  try:
    return int(image.getexif().get(ExifTags.Base.Orientation, 1))
  except Exception:  # malformed EXIF: keep the image as stored
    return 1


def _wide_grey_to_8bit(image: Image.Image) -> Image.Image:
  """I;16* / I / F as an 8-bit L image (or LA, when a transparency key marks pixels)."""
  a = np.asarray(image)
  if image.mode == "F":
    grey = np.clip(np.rint(np.nan_to_num(a.astype(np.float64))), 0, 255).astype(np.uint8)
  else:
    grey = np.rint(np.clip(a.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)
  key = image.info.get("transparency")
  if isinstance(key, int | float) and not isinstance(key, bool):
    alpha = np.where(a == key, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([grey, alpha]), "LA")
  return Image.fromarray(grey, "L")


def _has_alpha(image: Image.Image) -> bool:
  """transformers' test (an "A" band or a transparency key), plus premultiplied alpha ("a")."""
  bands = image.getbands()
  return "A" in bands or "a" in bands or image.info.get("transparency") is not None


def _composite_on_white(image: Image.Image) -> Image.Image:
  if image.mode == "La":  # PIL has no La -> RGBA conversion
    image = image.convert("LA")
  rgba = image.convert("RGBA")
  return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")


def to_rgb(image: Image.Image, *, name: str = "image") -> Image.Image:
  """An 8-bit RGB version of a PIL image by the module's rules (orientation, alpha over white,
  16-bit scaling, pixel limit). Returns `image` itself when it is already plain RGB with no
  transparency key and no orientation to apply; otherwise a new image. Errors name `name`."""
  if not isinstance(image, Image.Image):
    raise ImageError(f"{name}: expected a PIL image, got {type(image).__name__}")
  _check_pixels(image, name)
  try:
    if _orientation(image) != 1:
      image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_GREY or image.mode == "F":
      image = _wide_grey_to_8bit(image)
    if _has_alpha(image):
      return _composite_on_white(image)
    return image if image.mode == "RGB" else image.convert("RGB")
  except ImageError:
    raise
  except (OSError, ValueError, SyntaxError, EOFError, TypeError) as e:  # bad data or unknown mode
    raise ImageError(f"{name}: cannot convert image to RGB ({_one_line(e)})") from e


def open_image(
  source: str | os.PathLike | bytes | bytearray | memoryview, *, name: str | None = None
) -> Image.Image:
  """The RGB image (see `to_rgb`) of a file path or of encoded image bytes. A file that is not
  an image, is truncated, or has more than `MAX_PIXELS` pixels raises `ImageError` naming
  `name` (default: the path, or "image bytes")."""
  if isinstance(source, bytes | bytearray | memoryview):
    where, fp = name or "image bytes", io.BytesIO(bytes(source))
  elif isinstance(source, str | os.PathLike):
    where, fp = name or os.fspath(source), source
  else:
    raise ImageError(f"{name or 'image'}: expected a path or bytes, got {type(source).__name__}")
  try:
    with Image.open(fp) as im:
      _check_pixels(im, where)  # before decoding: open() reads only the header
      im.load()
      rgb = to_rgb(im, name=where)
      return im.copy() if rgb is im else rgb  # closing `im` frees its pixels
  except ImageError:
    raise
  except MemoryError:
    raise
  except Image.DecompressionBombError as e:
    raise ImageError(f"{where}: image too large ({_one_line(e)})") from e
  except Exception as e:  # PIL raises many types for bad files
    raise ImageError(f"{where}: cannot read image ({_one_line(e)})") from e
