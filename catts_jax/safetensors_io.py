"""Minimal safetensors reading (memory-mapped, one tensor at a time) and streaming writing.

The format is an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}}, then raw little-endian bytes. Reading through
np.memmap means a tensor is only paged in when sliced, and bfloat16 works without torch.
"""

from __future__ import annotations

import json
import pathlib
import struct
from collections.abc import Iterable

import ml_dtypes
import numpy as np

DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def read_header(path: pathlib.Path) -> tuple[dict, int]:
  """(tensor entries, byte offset where tensor data starts). A file that is not safetensors,
  or is cut short, is a one-line ValueError naming the file (and the tensor)."""
  size = pathlib.Path(path).stat().st_size
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (truncated header)")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
      raise ValueError(f"{path}: not a safetensors file (header of {n} bytes in a {size}-byte file)")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: not a safetensors file ({e})") from e
  if not isinstance(header, dict):
    raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
  header.pop("__metadata__", None)
  for name, entry in header.items():
    _check_entry(path, name, entry, size - 8 - n)
  return header, 8 + n


def _check_entry(path, name: str, entry, data_bytes: int) -> None:
  try:
    dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    count = int(np.prod(shape, dtype=np.int64)) if all(int(d) >= 0 for d in shape) else -1
  except (KeyError, TypeError, ValueError):
    raise ValueError(f"{path}: tensor {name}: malformed header entry {entry!r:.200}") from None
  if dtype not in DTYPES:
    raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
  if count < 0 or not 0 <= start <= end or end - start != count * np.dtype(DTYPES[dtype]).itemsize:
    raise ValueError(f"{path}: tensor {name}: offsets {start}..{end} do not fit shape {shape} of {dtype}")
  if end > data_bytes:
    raise ValueError(
      f"{path}: truncated: tensor {name} ends at byte {end} of the data, which holds {data_bytes}"
    )


class SafetensorsFile:
  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    self.entries, self._data_start = read_header(self.path)
    self._mmap = None

  def keys(self) -> list[str]:
    return list(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    """A read-only memory-mapped view; nothing is read until it is used."""
    entry = self.entries[name]
    if entry["dtype"] not in DTYPES:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {entry['dtype']}")
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    start, end = entry["data_offsets"]
    raw = self._mmap[self._data_start + start : self._data_start + end]
    return raw.view(DTYPES[entry["dtype"]]).reshape(entry["shape"])


def write(path: str | pathlib.Path, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype]], produce):
  """Write a safetensors file, calling `produce(name)` for one tensor's array at a time.

  `tensors` gives (name, shape, dtype) for every tensor so that the header can be written
  first; only one tensor is in host memory at any moment.
  """
  header, offset = {}, 0
  specs = list(tensors)
  for name, shape, dtype in specs:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    header[name] = {
      "dtype": NAMES[np.dtype(dtype)],
      "shape": list(shape),
      "data_offsets": [offset, offset + nbytes],
    }
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as the reference writer does
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype in specs:
      array = np.ascontiguousarray(produce(name), dtype=dtype)
      if array.shape != tuple(shape):
        raise ValueError(f"{name}: produced shape {array.shape}, header says {tuple(shape)}")
      f.write(array.tobytes())
