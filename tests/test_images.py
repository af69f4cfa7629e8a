"""One image loader everywhere (catts_jax.images): the data path (schema.decode_images), the
processing path (processing.load_image), the perturbation path (perturb at strength 0), the
Expert client's data URLs and saliency's input all give the same pixels, and those are
transformers' `convert_to_rgb` (alpha over white) or a stated expectation (16-bit: round(v / 257);
CMYK: PIL's conversion; EXIF: the rotated image). Bad files give one-line errors naming the item."""

from __future__ import annotations

import io
import pathlib
import types

import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers.image_transforms import convert_to_rgb

from catts_jax import images
from catts_jax import perturb as P
from catts_jax.data import schema
from catts_jax.processing import load_image
from catts_jax.tts import expert

H, W = 12, 16


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  image.save(buf, fmt, **kw)
  return buf.getvalue()


def line_on_transparent() -> np.ndarray:
  """RGBA: a black horizontal line on a fully transparent (black) background, plus a column of
  half-transparent red so that the blend's rounding is checked too."""
  rgba = np.zeros((H, W, 4), np.uint8)
  rgba[5, :, 3] = 255
  rgba[:, 3] = (200, 40, 0, 128)
  return rgba


def hf(image: Image.Image) -> np.ndarray:
  return convert_to_rgb(image, return_numpy=True)


def rgba_case():
  im = Image.fromarray(line_on_transparent(), "RGBA")
  return im, encode(im, "PNG"), hf(im)


def la_case():
  la = np.zeros((H, W, 2), np.uint8)
  la[..., 0] = np.arange(W) * 16  # grey ramp
  la[..., 1] = np.linspace(0, 255, H).astype(np.uint8)[:, None]  # alpha ramp
  la[7, :] = (0, 255)  # an opaque black line
  im = Image.fromarray(la, "LA")
  return im, encode(im, "PNG"), hf(im)


def palette_case():
  """P with a transparent index 0: a black line (index 1) on a transparent background."""
  im = Image.new("P", (W, H), 0)
  im.putpalette([0, 0, 0, 0, 0, 0, 30, 200, 90] + [0] * 759)
  for x in range(W):
    im.putpixel((x, 4), 1)
  im.putpixel((2, 2), 2)
  im.info["transparency"] = 0
  data = encode(im, "PNG", transparency=0)
  with Image.open(io.BytesIO(data)) as f:
    assert f.mode == "P" and f.info.get("transparency") == 0
    expected = hf(f)
  np.testing.assert_array_equal(expected, hf(im))
  return im, data, expected


def pa_case():
  """The RGBA image as palette + alpha (PIL's LA -> PA conversion drops the alpha, so the bands
  are merged). PA cannot be written to PNG (or any format PIL saves): it only enters in memory."""
  rgba = line_on_transparent()
  index = np.zeros((H, W), np.uint8)
  index[:, 3] = 1
  im = Image.merge("PA", [Image.fromarray(index, "L"), Image.fromarray(rgba[..., 3], "L")])
  im.putpalette([0, 0, 0, 200, 40, 0] + [0] * 762)
  expected = hf(im)
  np.testing.assert_array_equal(expected, hf(Image.fromarray(rgba, "RGBA")))
  return im, None, expected


def gradient16() -> np.ndarray:
  return np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)


def i16_case():
  a = gradient16()
  im = Image.fromarray(a)
  data = encode(im, "PNG")
  with Image.open(io.BytesIO(data)) as f:
    assert f.mode == "I;16"
  grey = np.rint(a / 257.0).astype(np.uint8)  # the stated rounding: nearest (never a tie)
  return im, data, np.repeat(grey[..., None], 3, axis=-1)


def cmyk_case(fmt: str = "TIFF"):
  """CMYK through PIL's conversion; the TIFF is lossless, so the in-memory image and the file agree."""
  rng = np.random.default_rng(0)
  im = Image.fromarray(rng.integers(0, 256, (H, W, 4), dtype=np.uint8), "CMYK")
  data = encode(im, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  with Image.open(io.BytesIO(data)) as f:
    assert f.mode == "CMYK"
    expected = np.asarray(f.convert("RGB"))
  if fmt == "JPEG":  # lossy: the in-memory image is the decoded file
    im = Image.open(io.BytesIO(data))
  np.testing.assert_array_equal(np.asarray(im.convert("RGB")), expected)
  return im, data, expected


def exif_case():
  """A JPEG stored 16 wide x 12 high whose EXIF orientation 6 says: rotate to 12 wide x 16 high."""
  rgb = np.zeros((H, W, 3), np.uint8)
  rgb[:, : W // 2] = 255  # left half white: after the rotation, the top half
  exif = Image.Exif()
  exif[0x0112] = 6
  data = encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95)
  with Image.open(io.BytesIO(data)) as f:
    assert f.size == (W, H)
    expected = np.asarray(ImageOps.exif_transpose(f).convert("RGB"))
  assert expected.shape == (W, H, 3)
  return Image.open(io.BytesIO(data)), data, expected


CASES = {
  "rgba": rgba_case,
  "la": la_case,
  "p_transparency": palette_case,
  "pa": pa_case,
  "i16": i16_case,
  "cmyk_tiff": cmyk_case,
  "cmyk_jpeg": lambda: cmyk_case("JPEG"),
  "exif": exif_case,
}


def paths(image: Image.Image, data: bytes | None, tmp_path: pathlib.Path) -> dict[str, np.ndarray]:
  """The pixels each entry path makes of one image (the encoded file where there is one)."""
  out = {
    "to_rgb": images.to_rgb(image),
    "processing(PIL)": load_image(image),
    "perturb(PIL)": P.perturb(image, "blur", 0.0),
    "expert data URL": expert.decode_image_url(expert.image_url(image)),
  }
  if data is not None:
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    out["data"] = schema.decode_images({"id": "p1", "images": [data]})[0]
    out["processing(path)"] = load_image(path)
    with Image.open(path) as f:
      out["perturb(file)"] = P.perturb(f, "noise", 0.0)
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_path_gives_the_expected_pixels(case, tmp_path):
  image, data, expected = CASES[case]()
  assert expected.dtype == np.uint8 and expected.shape[-1] == 3
  for where, got in paths(image, data, tmp_path).items():
    assert got.shape == expected.shape, (where, got.shape)
    np.testing.assert_array_equal(got, expected, err_msg=where)


def test_black_line_on_transparent_stays_a_line_on_white():
  """The original bug: PIL's convert("RGB") drops alpha, and the transparent (black) background
  made the whole image black."""
  for make in (rgba_case, palette_case, pa_case):
    image, data, _ = make()
    line_row = 5 if make is not palette_case else 4
    naive = np.asarray(image.convert("RGB"))
    assert (naive[:, :2] == 0).all()  # what the model used to see: no line, all black
    for got in (np.asarray(images.to_rgb(image)), *([np.asarray(images.open_image(data))] if data else [])):
      assert (got[line_row, :2] == 0).all()
      assert (np.delete(got, line_row, axis=0)[:, :2] == 255).all()


def test_half_transparent_blend_by_value():
  got = np.asarray(images.to_rgb(Image.fromarray(line_on_transparent(), "RGBA")))
  np.testing.assert_array_equal(got[0, 3], [227, 147, 127])  # round((c * 128 + 255 * 127) / 255)


def test_16bit_gradient_keeps_its_gradient():
  """The original bug: PIL clips I;16 at 255 on the way to RGB, so the image came out white."""
  a = gradient16()
  data = encode(Image.fromarray(a), "PNG")
  with Image.open(io.BytesIO(data)) as f:
    assert (np.asarray(f.convert("RGB")) == 255).mean() > 0.9  # the old path
  got = np.asarray(schema.decode_images({"id": "g", "images": [data]})[0])[..., 0].ravel()
  assert got[0] == 0 and got[-1] == 255
  assert (np.diff(got.astype(int)) >= 0).all() and len(np.unique(got)) > 150
  np.testing.assert_array_equal(got, np.rint(a.ravel() / 257.0))
  np.testing.assert_array_equal(
    np.asarray(images.to_rgb(Image.fromarray(a.astype(">u2"))))[..., 0], got.reshape(H, W)
  )
  i32 = Image.fromarray(np.array([[-5, 257 * 100, 257 * 200 + 128, 99999]], np.int32))
  np.testing.assert_array_equal(np.asarray(images.to_rgb(i32))[0, :, 0], [0, 100, 200, 255])
  f32 = Image.fromarray(np.array([[-3.0, 100.6, 300.0, np.nan]], np.float32), "F")
  np.testing.assert_array_equal(np.asarray(images.to_rgb(f32))[0, :, 0], [0, 101, 255, 0])


def test_16bit_transparency_key_is_composited():
  a = np.array([[0, 1000, 65535]], np.uint16)
  im = Image.fromarray(a)
  im.info["transparency"] = 0
  np.testing.assert_array_equal(np.asarray(images.to_rgb(im))[0, :, 0], [255, 4, 255])


def test_rgb_passes_through_and_opened_files_stay_usable(tmp_path):
  rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8))
  assert images.to_rgb(rgb) is rgb
  assert P.perturb(rgb, "blur", 0) is not rgb
  path = tmp_path / "x.png"
  rgb.save(path)
  back = images.open_image(path)  # the file is closed: the pixels must still be there
  np.testing.assert_array_equal(np.asarray(back), np.asarray(rgb))


def test_saliency_input_uses_the_converter():
  from catts_jax.saliency import ClipSaliency

  sal = ClipSaliency.__new__(ClipSaliency)
  sal.visual = types.SimpleNamespace(image_size=(H, W))
  sal.mean, sal.std = np.zeros(3, np.float32), np.ones(3, np.float32)
  image, _, expected = rgba_case()
  x = sal.pixels(image).numpy()[0].transpose(1, 2, 0)
  np.testing.assert_allclose(x * 255, expected, atol=1e-3)


# --- errors: one line, naming the item ---------------------------------------------------------


def one_line(e: pytest.ExceptionInfo) -> str:
  text = str(e.value)
  assert "\n" not in text and isinstance(e.value, ValueError), text
  return text


def test_pixel_limit_names_the_item(monkeypatch, tmp_path):
  monkeypatch.setattr(images, "MAX_PIXELS", 100)
  data = encode(Image.new("RGB", (20, 10)), "PNG")
  with pytest.raises(ValueError) as e:
    schema.decode_images({"id": "prob-7", "images": [data]})
  assert one_line(e).startswith("prob-7: image 0 cannot be decoded (image of 20x10 = 200 pixels exceeds")
  path = tmp_path / "huge.png"
  path.write_bytes(data)
  with pytest.raises(ValueError) as e:
    load_image(path)
  assert one_line(e).startswith(f"{path}: image of 20x10")
  with pytest.raises(ValueError) as e:
    load_image(Image.new("L", (20, 10)), "prompt 3 image 1")
  assert one_line(e).startswith("prompt 3 image 1: image of 20x10")
  with pytest.raises(ValueError) as e:
    schema.check_image(data, "mathvision 12")
  assert one_line(e).startswith("mathvision 12: image of 20x10 pixels exceeds the limit of 100")
  assert images.open_image(encode(Image.new("RGB", (10, 10)), "PNG")).size == (10, 10)  # at the limit


def test_default_pixel_limit_refuses_a_bomb_header():
  """A PNG header declaring 10000 x 10000 (> MAX_PIXELS): refused before any pixel is decoded."""
  import struct
  import zlib

  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  side = 10_000
  assert side * side > images.MAX_PIXELS
  png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
  png += chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
  with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ValueError) as e:
    images.open_image(png, name="bomb.png")
  assert one_line(e).startswith("bomb.png: image of 10000x10000 = 100000000 pixels exceeds the limit")


def test_pil_decompression_bomb_error_is_one_line(monkeypatch):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
  with pytest.raises(ValueError) as e:
    images.open_image(encode(Image.new("RGB", (20, 10)), "PNG"), name="q9")
  assert one_line(e).startswith("q9: image too large (DecompressionBombError:")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_names_the_item(fmt, tmp_path):
  rng = np.random.default_rng(2)
  data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
  cut = data[: len(data) // 2]
  with pytest.raises(ValueError) as e:
    schema.decode_images({"id": "prob-3", "images": [cut]})
  assert one_line(e).startswith(
    "prob-3: image 0 cannot be decoded (cannot read image (OSError: image file is trunc"
  )
  path = tmp_path / f"cut.{fmt.lower()}"
  path.write_bytes(cut)
  with pytest.raises(ValueError) as e:
    load_image(path)
  assert one_line(e).startswith(f"{path}: cannot read image (")
  with pytest.raises(ValueError) as e:
    images.open_image(b"not an image", name="item 4")
  assert one_line(e).startswith("item 4: cannot read image (UnidentifiedImageError")
  with pytest.raises(ValueError) as e:
    images.to_rgb(np.zeros((2, 2, 3)), name="item 5")
  assert one_line(e) == "item 5: expected a PIL image, got ndarray"


def test_premultiplied_alpha_is_composited_over_white_too():
  """A stated difference from transformers, which ignores the premultiplied "a" band (RGBa then
  comes out as if over black; La cannot be converted at all): both come out as their straight
  LA / RGBA form does."""
  rgba = Image.fromarray(line_on_transparent(), "RGBA")
  for premultiplied in (rgba.convert("RGBa"), rgba.convert("LA").convert("La")):
    straight = rgba if premultiplied.mode == "RGBa" else rgba.convert("LA")
    got = np.asarray(images.to_rgb(premultiplied)).astype(int)
    np.testing.assert_allclose(got, hf(straight), atol=2)  # premultiplying rounds the colour
    assert (got[0, :2] == 255).all()
  assert (hf(rgba.convert("RGBa"))[0, :2] == 0).all()
