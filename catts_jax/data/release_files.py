"""Reading the file formats the official releases use: HF parquet shards, JSON, JSONL, and
HF image cells ({bytes, path} structs, raw bytes, base64 strings or file paths)."""

from __future__ import annotations

import base64
import binascii
import json
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any


def parquet_rows(paths: Sequence[pathlib.Path], batch_size: int = 64) -> Iterator[tuple[str, dict[str, Any]]]:
  """(where, row) for every row of the shards, read a batch at a time."""
  import pyarrow.parquet as pq

  for path in paths:
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
      for row in batch.to_pylist():
        yield f"{path}[{n}]", row
        n += 1


def json_rows(path: pathlib.Path) -> Iterator[tuple[str, dict[str, Any]]]:
  """Rows of a JSON list, a JSON object keyed by id (MathVista), or JSON lines."""
  if path.suffix == ".jsonl":
    for lineno, line in enumerate(path.open(encoding="utf-8"), 1):
      if line.strip():
        try:
          yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: not JSON ({e})") from e
    return
  data = json.loads(path.read_text(encoding="utf-8"))
  items = data.items() if isinstance(data, dict) else enumerate(data)
  for key, row in items:
    yield f"{path}[{key}]", row


def shards(root: pathlib.Path, split: str, ext: str = "parquet") -> list[pathlib.Path]:
  """HF shard files of a split anywhere under root: `split-00000-of-00001-*.parquet` or
  `split.parquet` (not `testmini-*` when asked for `test`)."""
  found = set(root.rglob(f"{split}-*.{ext}")) | set(root.rglob(f"{split}.{ext}"))
  return sorted(p for p in found if p.is_file())


def image_bytes(cell: Any, roots: Sequence[pathlib.Path] = (), where: str = "") -> bytes | None:
  """Encoded image bytes from an HF image cell; None for an empty cell."""
  if cell is None:
    return None
  if isinstance(cell, dict):
    if cell.get("bytes"):
      return bytes(cell["bytes"])
    return image_bytes(cell.get("path"), roots, where)
  if isinstance(cell, bytes | bytearray):
    return bytes(cell)
  if isinstance(cell, str):
    if not cell:
      return None
    for root in roots:
      path = root / cell
      if path.is_file():
        return path.read_bytes()
    if len(cell) > 256:  # VLMEvalKit TSVs carry base64 images
      try:
        return base64.b64decode(cell, validate=True)
      except (binascii.Error, ValueError):
        pass
    raise FileNotFoundError(f"{where}: image {cell!r} not found under {[str(r) for r in roots]}")
  raise ValueError(f"{where}: unsupported image cell of type {type(cell).__name__}")
