"""Prompts + images -> static-shape numpy batches for the jitted model.

The HF processor from the checkpoint directory does tokenisation, the chat template and
image patching. We then left-pad sequences to bucket sizes and lay the patches out one image
per slot ([images, patches per image], both bucketed), so the number of distinct shapes (and
so of jit compilations) stays small and the vision tower attends within each image only, and
compute the M-RoPE positions, per-patch (row, col, image) metadata and each image token's
vision feature (`image_index`) on the host.

Rows that share an image share its slot: rows whose prompt text and images are the same
(images compared by object identity, paths by their string) are encoded once, and all their
image tokens read the same features. A rollout's G samples of one problem, scored as G rows
of one prompt and one image list, thus encode each image once, not G times. A processor also
keeps what the HF processor made of each prompt and its images' pixels (`EncodedCache`, least
recently used out), so a pair seen in an earlier call is not processed again.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import pathlib
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image

from catts_jax import images as images_lib
from catts_jax.models.qwen2_5_vl.config import ModelConfig
from catts_jax.models.qwen2_5_vl.model import get_rope_index

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
# The keyword arguments of `Qwen2_5_VL.__call__` that a `Batch` provides (the last four
# only with images).
MODEL_INPUT_KEYS = (
  "input_ids",
  "positions",
  "attention_mask",
  "pixel_values",
  "patch_pos",
  "patch_image",
  "image_index",
)


def length_buckets(smallest: int, largest: int, per_octave: int = 1) -> tuple[int, ...]:
  """Token-length buckets: each octave [n, 2n) split into `per_octave` equal steps (4: 32, 40,
  48, 56, 64, 80, ...). Powers of two (1) waste up to half a row but keep the compiled
  shapes fewest; 4 pads by under a quarter, for runs of many steps over few shapes (a
  136-token SFT batch padded to 256 took 1.6-2x the step padded to 160)."""
  if smallest % per_octave:
    raise ValueError(f"smallest bucket {smallest}: expected a multiple of per_octave {per_octave}")
  sizes, octave = [], smallest
  while octave < largest:
    sizes += [n for n in range(octave, 2 * octave, octave // per_octave) if n < largest]
    octave *= 2
  return (*sizes, largest)


def power_of_two_buckets(smallest: int, largest: int) -> tuple[int, ...]:
  return length_buckets(smallest, largest, per_octave=1)


def text_buckets(longest: int, per_octave: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The default (sequence, response) token-length buckets for rows of up to `longest` tokens:
  responses take at most half a row. The Processor and train.compile's planner share them."""
  return length_buckets(32, longest, per_octave), length_buckets(16, longest // 2, per_octave)


def bucket(n: int, buckets: Sequence[int], what: str) -> int:
  for b in buckets:
    if n <= b:
      return b
  raise ValueError(f"{what}: {n} exceeds the largest bucket {buckets[-1]}")


def image_key(image: Image.Image | str | pathlib.Path) -> tuple[str, object]:
  """What makes two images of a batch the same image: the same object, or the same path."""
  if isinstance(image, Image.Image):
    return ("object", id(image))
  return ("path", str(image))


def pixel_digest(image: Image.Image) -> bytes:
  """What makes two RGB images the same image: their size and pixels."""
  digest = hashlib.blake2b(f"{image.width}x{image.height}".encode(), digest_size=16)
  digest.update(image.tobytes())
  return digest.digest()


def load_image(image: Image.Image | str | pathlib.Path, name: str | None = None) -> Image.Image:
  """An RGB PIL image from a PIL image or a path, by `catts_jax.images`' rules (EXIF
  orientation, alpha over white, 16-bit scaled); errors name the file, else `name`."""
  if isinstance(image, Image.Image):
    return images_lib.to_rgb(image, name=name or "image")
  return images_lib.open_image(image)


@dataclasses.dataclass
class Batch:
  """Numpy arrays ready for `Qwen2_5_VL.__call__` (see `model_inputs`)."""

  input_ids: np.ndarray  # [B, T] int32, left-padded
  attention_mask: np.ndarray  # [B, T] int32
  positions: np.ndarray  # [3, B, T] int32
  rope_deltas: np.ndarray  # [B] int32
  pixel_values: np.ndarray | None  # [I, S, C*T*p*p] float32: one image (frame) per slot, zero-padded
  patch_pos: np.ndarray | None  # [I, S, 2] int32 (row, col) within its image
  patch_image: np.ndarray | None  # [I, S] int32 image index, -1 for padding
  image_index: np.ndarray | None  # [B, T] int32 merged-feature index of each image token, 0 elsewhere
  image_grid_thw: np.ndarray | None  # [num_images, 3]: the distinct images, in slot order
  num_rows: int  # real rows; rows past it pad the batch to a bucket (mask all 0)

  def model_inputs(self) -> dict[str, np.ndarray]:
    out = dict(input_ids=self.input_ids, positions=self.positions, attention_mask=self.attention_mask)
    if self.pixel_values is not None:
      out.update(
        pixel_values=self.pixel_values,
        patch_pos=self.patch_pos,
        patch_image=self.patch_image,
        image_index=self.image_index,
      )
    return out


@dataclasses.dataclass
class ScoringBatch:
  """Prompt + response sequences. Each response fills the end of its row (sequences are
  left-padded), so the positions predicting responses are one static slice of the last
  `response_len` + 1 positions; `response_mask` [B, response_len] marks real tokens."""

  batch: Batch
  response_mask: np.ndarray
  response_len: int


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
  """One prompt as the HF processor encodes it: token ids and each image's patches and grid."""

  ids: np.ndarray  # [tokens] int32
  pixels: tuple[np.ndarray, ...]  # per image: [patches, C*T*p*p] float32
  grids: np.ndarray  # [images, 3] int32 (t, h, w)

  @property
  def nbytes(self) -> int:
    return self.ids.nbytes + sum(p.nbytes for p in self.pixels) + self.grids.nbytes


class EncodedCache:
  """The last `max_bytes` of encoded (prompt, image pixels) pairs, or of processed images,
  least recently used out first; shared by the threads of a run (a lock guards the order).
  Arrays are read-only."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self.nbytes = 0
    self._entries: collections.OrderedDict[tuple, EncodedPrompt] = collections.OrderedDict()
    self._lock = threading.Lock()

  def get_many(self, keys: Sequence[tuple]) -> list[EncodedPrompt | None]:
    with self._lock:
      for key in keys:
        if key in self._entries:
          self._entries.move_to_end(key)
      return [self._entries.get(key) for key in keys]

  def put_many(self, items: Sequence[tuple[tuple, EncodedPrompt]]) -> None:
    for _, entry in items:
      for a in (entry.ids, *entry.pixels, entry.grids):
        a.flags.writeable = False
    with self._lock:
      for key, entry in items:
        if key in self._entries or entry.nbytes > self.max_bytes:
          continue
        self._entries[key] = entry
        self.nbytes += entry.nbytes
      while self.nbytes > self.max_bytes:
        self.nbytes -= self._entries.popitem(last=False)[1].nbytes


@dataclasses.dataclass
class Encoded:
  """Tokenised prompts (unpadded, one array per row) and the batch's distinct processed
  images; `row_images[b]`: the indices (into `image_grid_thw`) of row b's images, in order."""

  ids: list[np.ndarray]
  pixel_values: np.ndarray | None
  image_grid_thw: np.ndarray | None
  row_images: list[list[int]]


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


def image_slots(
  pixel_values: np.ndarray,
  grid_thw: np.ndarray,
  merge: int,
  image_buckets: Sequence[int],
  patch_buckets: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The processor's flat patches [P, D] -> one image (frame) per slot: pixels [I, S, D],
  (row, col) [I, S, 2] and image index [I, S] (-1 marks padding), with I and S the smallest
  buckets that hold the images and the largest image. Slots keep the vision tower's
  attention within an image (as the reference's cu_seqlens do) at I * S^2 cost, not P^2."""
  pos, image = patch_metadata(grid_thw, merge)
  frames = int(image.max()) + 1
  counts = np.bincount(image, minlength=frames)
  slots = bucket(frames, image_buckets, "images in batch")
  size = bucket(int(counts.max()), patch_buckets, "patches per image")
  pixels = np.zeros((slots, size, pixel_values.shape[-1]), np.float32)
  slot_pos = np.zeros((slots, size, 2), np.int32)
  slot_image = np.full((slots, size), -1, np.int32)
  within = np.arange(len(image)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[image]
  pixels[image, within] = pixel_values
  slot_pos[image, within] = pos
  slot_image[image, within] = image
  return pixels, slot_pos, slot_image


def image_token_index(
  input_ids: np.ndarray,
  image_token_id: int,
  row_images: Sequence[Sequence[int]],
  grid_thw: np.ndarray,
  slot_size: int,
  merge: int,
) -> np.ndarray:
  """[B, T] int32: the merged vision feature each image token reads (0 on other tokens).

  The vision tower returns features in slot order, slot_size / merge^2 a slot, and
  `image_slots` puts frame f of image g in slot (frames of images before g) + f. Row b's
  image tokens, in order, read the features of its images `row_images[b]` (indices into
  `grid_thw`), frame by frame: rows listing the same image read the same features."""
  grid = np.asarray(grid_thw)
  first_slot = np.concatenate([[0], np.cumsum(grid[:, 0])[:-1]])
  per_slot = slot_size // merge**2
  index = np.zeros(np.shape(input_ids), np.int32)
  for b, images in enumerate(row_images):
    features = [
      (first_slot[g] + f) * per_slot + np.arange(grid[g, 1] * grid[g, 2] // merge**2)
      for g in images
      for f in range(grid[g, 0])
    ]
    features = np.concatenate(features) if features else np.zeros(0, np.int32)
    tokens = input_ids[b] == image_token_id
    if tokens.sum() != len(features):
      raise ValueError(f"row {b}: {int(tokens.sum())} image tokens but its images make {len(features)}")
    index[b, tokens] = features
  return index


class Processor:
  """Wraps the checkpoint's HF `AutoProcessor` and produces bucketed `Batch`es."""

  def __init__(
    self,
    path: str | pathlib.Path,
    cfg: ModelConfig | None = None,
    *,
    seq_buckets: Sequence[int] | None = None,
    patch_buckets: Sequence[int] | None = None,
    image_buckets: Sequence[int] | None = None,
    batch_buckets: Sequence[int] | None = None,
    response_buckets: Sequence[int] | None = None,
    buckets_per_octave: int = 1,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    cache_bytes: int = 256 << 20,
  ):
    """min_pixels / max_pixels override the checkpoint's image resizing bounds (Qwen's
    resize keeps each image's pixel count within them); give both or neither.
    cache_bytes: encoded prompts and images kept for later calls (0: none).
    buckets_per_octave: the default sequence and response length buckets (`text_buckets`)."""
    from transformers import AutoProcessor  # heavy import, only when a processor is built

    self.path = pathlib.Path(path)
    self.cfg = cfg or ModelConfig.from_pretrained(self.path)
    kwargs = {}
    if (min_pixels is None) != (max_pixels is None):
      raise ValueError(f"min_pixels {min_pixels} / max_pixels {max_pixels}: give both or neither")
    if min_pixels is not None:
      if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
      kwargs["size"] = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    self.hf = AutoProcessor.from_pretrained(self.path, **kwargs)
    self.tokenizer = self.hf.tokenizer
    self.tokenizer.padding_side = "left"  # generation appends on the right
    longest = seq_buckets[-1] if seq_buckets else self.cfg.text.max_position_embeddings
    default_seq, default_response = text_buckets(longest, buckets_per_octave)
    self.seq_buckets = tuple(seq_buckets or default_seq)
    # Patches per image (multiples of the 2x2 merge block): powers of two waste < 2x, and
    # starting at 64 keeps small images to one shape.
    self.patch_buckets = tuple(patch_buckets or power_of_two_buckets(64, 1 << 20))
    self.image_buckets = tuple(image_buckets or power_of_two_buckets(1, 1 << 16))
    self.batch_buckets = tuple(batch_buckets or power_of_two_buckets(1, 1 << 16))
    self.response_buckets = tuple(response_buckets or default_response)
    self.cache = EncodedCache(cache_bytes)
    self.image_cache = EncodedCache(cache_bytes)  # the same pixels' arrays as `cache`'s
    self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

  def chat_prompt(self, question: str, num_images: int = 0, system: str | None = None) -> str:
    """A user turn with the images first, rendered with the checkpoint's chat template."""
    return self.chat([{"type": "image"}] * num_images + [{"type": "text", "text": question}], system)

  def chat(self, content: Sequence[dict], system: str | None = None) -> str:
    """A user turn from content items ({"type": "text", "text"} / {"type": "image"}, in
    order), rendered with the checkpoint's chat template and the generation prompt."""
    items = [
      {"type": "image"} if c["type"] == "image" else {"type": "text", "text": c["text"]} for c in content
    ]
    messages = [{"role": "user", "content": items}]
    if system is not None:
      messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

  def encode(self, prompts: Sequence[str], images: Sequence[Sequence] | None = None) -> Encoded:
    """prompts: rendered text, each holding one IMAGE_PLACEHOLDER per image of that prompt.
    images: per prompt, a list of PIL images or paths.

    Each distinct (prompt text, images) pair, images keyed by `image_key`, is encoded once,
    and rows that repeat it share its token ids and its images. A pair is encoded only if this
    processor has not encoded its prompt and pixels before (`cache`): CA-TTS scores a
    problem's prompt and image many times (every N, every method, both self-check
    conditions); and an image's pixels are processed only once, whatever the prompt
    (`image_cache`, see `_hf_encode`)."""
    images = images or [[] for _ in prompts]
    if len(images) != len(prompts):
      raise ValueError(f"{len(prompts)} prompts but {len(images)} image lists")
    distinct: dict[tuple, int] = {}  # (prompt, image keys) -> index into `pairs`
    pairs, row_distinct = [], []  # pairs: (prompt, RGB images, cache key)
    for i, (prompt, imgs) in enumerate(zip(prompts, images)):
      n = prompt.count(self.hf.image_token)
      if n != len(imgs):
        raise ValueError(f"prompt {i}: {n} image placeholders but {len(imgs)} images")
      key = (prompt, tuple(image_key(im) for im in imgs))
      if key not in distinct:
        distinct[key] = len(pairs)
        rgbs = [load_image(im, f"prompt {i} image {j}") for j, im in enumerate(imgs)]
        pairs.append((prompt, rgbs, (prompt, tuple(pixel_digest(im) for im in rgbs))))
      row_distinct.append(distinct[key])
    entries = self.cache.get_many([cache_key for *_, cache_key in pairs])
    missing = {}  # cache key -> a pair to encode (copies of one image share it)
    for d, entry in enumerate(entries):
      if entry is None:
        missing.setdefault(pairs[d][2], d)
    if missing:
      firsts = list(missing.values())
      encoded = self._hf_encode(*zip(*[pairs[d] for d in firsts]))
      fresh = dict(zip(missing, encoded))
      entries = [fresh.get(pairs[d][2], entry) for d, entry in enumerate(entries)]
      self.cache.put_many(list(fresh.items()))
    rows = [entries[d].ids for d in row_distinct]
    first_image = np.cumsum([0] + [len(e.grids) for e in entries]).tolist()
    row_images = [list(range(first_image[d], first_image[d + 1])) for d in row_distinct]
    if first_image[-1] == 0:
      return Encoded(rows, None, None, row_images)
    return Encoded(
      rows,
      np.concatenate([p for e in entries for p in e.pixels]),
      np.concatenate([e.grids for e in entries if len(e.grids)]),
      row_images,
    )

  def _hf_encode(
    self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]], keys: Sequence[tuple]
  ) -> list[EncodedPrompt]:
    """Distinct prompts and their RGB images, encoded per prompt as the HF processor does:
    each image through its image processor unless its pixels were processed before
    (`image_cache`: CA-TTS asks about one image in many prompts, the Expert's, the
    re-answer's, the self-check's), each image placeholder expanded to its token count.
    `keys`: each pair's cache key (prompt, its images' `pixel_digest`s)."""
    flat = [im for imgs in images for im in imgs]
    processed = iter(self._process_images(flat, [digest for _, digests in keys for digest in digests]))
    per_prompt = [[next(processed) for _ in imgs] for imgs in images]
    token, merge = self.hf.image_token, self.hf.image_processor.merge_size**2
    texts = []
    for prompt, encoded in zip(prompts, per_prompt):
      parts = prompt.split(token)
      counts = [int(e.grids.prod()) // merge for e in encoded]
      texts.append(parts[0] + "".join(token * n + part for n, part in zip(counts, parts[1:])))
    enc = self.tokenizer(texts, return_tensors="np", padding=True)
    return [
      EncodedPrompt(
        row[mask.astype(bool)].astype(np.int32),
        tuple(e.pixels[0] for e in encoded),
        np.concatenate([np.zeros((0, 3), np.int32), *(e.grids for e in encoded)]),
      )
      for row, mask, encoded in zip(enc["input_ids"], enc["attention_mask"], per_prompt)
    ]

  def _process_images(self, images: Sequence[Image.Image], keys: Sequence[bytes]) -> list[EncodedPrompt]:
    """Each RGB image's patches and grid (as an EncodedPrompt without ids), from `image_cache`
    (by its `pixel_digest`, `keys`) or the HF image processor (one call for those it lacks;
    copies of one image once)."""
    found = self.image_cache.get_many(keys)
    todo = {key: im for key, im, got in zip(keys, images, found) if got is None}
    fresh = {}
    if todo:
      out = self.hf.image_processor(images=list(todo.values()), return_tensors="np")
      grids = np.asarray(out["image_grid_thw"], np.int32)
      # Copies, not views: a kept image must not hold its whole call's pixels in memory.
      pixels = np.split(np.asarray(out["pixel_values"], np.float32), np.cumsum(grids.prod(-1))[:-1])
      no_ids = np.zeros((0,), np.int32)
      fresh = {key: EncodedPrompt(no_ids, (p.copy(),), g[None]) for key, p, g in zip(todo, pixels, grids)}
      self.image_cache.put_many(list(fresh.items()))
    return [got if got is not None else fresh[key] for key, got in zip(keys, found)]

  def assemble(self, rows: Sequence[np.ndarray], encoded: Encoded, min_length: int = 0) -> Batch:
    """Left-pad token rows to a length bucket and the batch to a row bucket, lay the distinct
    images out in slots (`image_slots`), point each image token at its feature
    (`image_token_index`) and compute positions."""
    for i, row in enumerate(rows):
      bucket(len(row), self.seq_buckets, f"prompt {i} length in tokens")
    length = bucket(max(max(len(r) for r in rows), min_length), self.seq_buckets, "batch length in tokens")
    num_rows = bucket(len(rows), self.batch_buckets, "batch rows")
    ids = np.full((num_rows, length), self.pad_id, np.int32)
    mask = np.zeros((num_rows, length), np.int32)
    for i, row in enumerate(rows):
      ids[i, length - len(row) :] = row
      mask[i, length - len(row) :] = 1
    grid, merge = encoded.image_grid_thw, self.cfg.vision.spatial_merge_size
    # Positions take each row's images in row order, shared ones again for every row.
    row_grids = None if grid is None else grid[np.concatenate(encoded.row_images).astype(int)]
    positions, deltas = get_rope_index(
      ids, mask, row_grids, image_token_id=self.cfg.image_token_id, spatial_merge_size=merge
    )
    pixels = patch_pos = patch_image = index = None
    if grid is not None:
      pixels, patch_pos, patch_image = image_slots(
        encoded.pixel_values, grid, merge, self.image_buckets, self.patch_buckets
      )
      index = image_token_index(
        ids, self.cfg.image_token_id, encoded.row_images, grid, pixels.shape[1], merge
      )
    return Batch(
      input_ids=ids,
      attention_mask=mask,
      positions=positions,
      rope_deltas=deltas,
      pixel_values=pixels,
      patch_pos=patch_pos,
      patch_image=patch_image,
      image_index=index,
      image_grid_thw=grid,
      num_rows=len(rows),
    )

  def __call__(self, prompts: Sequence[str], images: Sequence[Sequence] | None = None) -> Batch:
    encoded = self.encode(prompts, images)
    return self.assemble(encoded.ids, encoded)

  def tokenize(self, text: str) -> list[int]:
    """Plain text -> token ids, no special tokens (a response as the model would emit it)."""
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def scoring_batch(
    self,
    prompts: Sequence[str],
    responses: Sequence[Sequence[int] | str],
    images: Sequence[Sequence] | None = None,
  ) -> ScoringBatch:
    """Prompt + response rows for teacher-forced scoring; responses as token ids or text."""
    if len(responses) != len(prompts):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    responses = [self.tokenize(r) if isinstance(r, str) else list(r) for r in responses]
    for i, r in enumerate(responses):
      if not r:
        raise ValueError(f"response {i} is empty: nothing to score")
    encoded = self.encode(prompts, images)
    response_len = bucket(max(len(r) for r in responses), self.response_buckets, "response length in tokens")
    rows = [np.concatenate([p, np.asarray(r, np.int32)]) for p, r in zip(encoded.ids, responses)]
    batch = self.assemble(rows, encoded, min_length=response_len + 1)
    response_mask = np.zeros((batch.input_ids.shape[0], response_len), np.int32)
    for i, r in enumerate(responses):
      response_mask[i, response_len - len(r) :] = 1
    return ScoringBatch(batch, response_mask, response_len)
