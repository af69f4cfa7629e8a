"""Shared tfds builder base: a local release directory in, array_record splits out.

Every benchmark is read from a local copy of its official release (users download it; tfds calls
this a manual download) given as `source_dir`. The builder config name is derived from that
directory and its content (name + a hash of its path and of every file's relative name, size
and modification time, see `fingerprint`), so building from two different copies, or from one
folder after an answer was edited or a problem added, never reuses the wrong cache: a changed
folder is built again on the next load, under a new name (the old build stays on disk).
Splits are written in release order (no shuffling), one array_record file set per split.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from catts_jax.data import schema

FILE_FORMAT = "array_record"


def fingerprint(root: pathlib.Path, exclude: pathlib.Path | None = None) -> str:
  """A hash of every file under `root` (relative name, size, modification time in ns),
  following links; dot files and folders, and `exclude` (a tfds cache inside the release), are
  left out. Cheap: one stat per file, no file is read."""
  root = pathlib.Path(root).expanduser().resolve()
  exclude = pathlib.Path(exclude).expanduser().resolve() if exclude else None
  digest = hashlib.sha1()
  for folder, dirs, files in os.walk(root, followlinks=True):
    here = pathlib.Path(folder)
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != exclude)
    for name in sorted(files):
      if name.startswith("."):
        continue
      try:
        st = (here / name).stat()
      except OSError:  # a broken link: no content to key on
        continue
      digest.update(
        f"{(here / name).relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
      )
  return digest.hexdigest()


def config_for(
  source_dir: str | pathlib.Path, data_dir: str | pathlib.Path | None = None
) -> tfds.core.BuilderConfig:
  """The builder config of a release folder: its name says which folder and which content."""
  path = pathlib.Path(source_dir).expanduser().resolve()
  stem = re.sub(r"[^a-z0-9]+", "_", path.name.lower()).strip("_") or "data"
  content = fingerprint(path, exclude=data_dir) if path.is_dir() else ""
  digest = hashlib.sha1(f"{path}\0{content}".encode()).hexdigest()[:10]
  return tfds.core.BuilderConfig(name=f"{stem[:40]}_{digest}", description=f"built from {path}")


class SchemaBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tfds builder of unified-schema examples, written as array_record and read without
  TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", FILE_FORMAT)
    super().__init__(**kwargs)

  # tfds locates a builder's files through `importlib_resources`, which is not installed on
  # Python >= 3.9 and not needed: the module file is where the metadata lives.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=schema.features(), disable_shuffling=True)


class ReleaseBuilder(SchemaBuilder, skip_registration=True):
  """Base class; subclasses set `name`, `SPLITS`, `LAYOUT_HINT` and implement `find_split` and
  `examples`. Construct with the release directory: `MathVision(source_dir=..., data_dir=...)`."""

  RELEASE_NOTES = {"1.0.0": "Unified schema, images as encoded bytes."}
  SPLITS: tuple[str, ...] = ()
  LAYOUT_HINT = ""

  def __init__(self, *, source_dir: str | pathlib.Path, **kwargs):
    self.source_dir = pathlib.Path(source_dir).expanduser()
    kwargs.setdefault("config", config_for(self.source_dir, kwargs.get("data_dir")))
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager) -> dict[str, Iterator]:
    root = self.source_dir
    if not root.is_dir():
      raise FileNotFoundError(f"{self.name}: data directory {root} does not exist")
    found = {split: src for split in self.available_splits(root) if (src := self.find_split(root, split))}
    if not found:
      raise FileNotFoundError(
        f"{self.name}: no split of {self.SPLITS} found under {root} ({self.LAYOUT_HINT})"
      )
    return {split: self._generate_examples(src, split) for split, src in found.items()}

  def available_splits(self, root: pathlib.Path) -> tuple[str, ...]:
    return self.SPLITS

  def find_split(self, root: pathlib.Path, split: str) -> Any:
    raise NotImplementedError

  def examples(self, src: Any, split: str) -> Iterator[dict[str, Any]]:
    raise NotImplementedError

  def _generate_examples(self, src: Any, split: str):
    seen: set[str] = set()
    for ex in self.examples(src, split):
      if ex["id"] in seen:
        raise ValueError(f"{self.name}/{split}: duplicate id {ex['id']!r}")
      seen.add(ex["id"])
      yield ex["id"], ex
