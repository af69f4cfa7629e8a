"""Build (once) and read a benchmark split as a sequence of plain example dicts."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from catts_jax.data import base, schema
from catts_jax.data.jsonl_dataset import Jsonl
from catts_jax.data.mathvision import MathVision
from catts_jax.data.mathvista import MathVista
from catts_jax.data.mmmu import MMMU
from catts_jax.data.mmstar import MMStar
from catts_jax.data.synthetic import Synthetic

BUILDERS: dict[str, type[base.ReleaseBuilder]] = {
  "mathvision": MathVision,
  "mathvista": MathVista,
  "mmstar": MMStar,
  "mmmu": MMMU,
  "jsonl": Jsonl,
}
DEFAULT_SPLIT = {
  "mathvision": "testmini",
  "mathvista": "testmini",
  "mmstar": "val",
  "mmmu": "validation",
  "synthetic": "test",
}
DEFAULT_DATA_DIR = pathlib.Path("~/tensorflow_datasets")


class Dataset(Sequence):
  """Random access over a built split; items are dicts in the unified schema."""

  def __init__(self, source, benchmark: str, split: str):
    self.source, self.benchmark, self.split = source, benchmark, split
    self._index: dict[str, int] | None = None

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(f"{self.benchmark}/{self.split}: index {i} out of range ({len(self)})")
    return schema.from_record(self.source[i])

  def index(self) -> dict[str, int]:
    """id -> position (built on first use by one pass over the split)."""
    if self._index is None:
      self._index = {ex["id"]: i for i, ex in enumerate(self)}
    return self._index

  def by_id(self, example_id: str) -> dict[str, Any]:
    return self[self.index()[str(example_id)]]

  def __repr__(self) -> str:
    return f"Dataset({self.benchmark}/{self.split}, {len(self)} examples)"


def builder(benchmark: str, manual_dir, data_dir=None, config: str | None = None) -> tfds.core.DatasetBuilder:
  data_dir = pathlib.Path(data_dir or DEFAULT_DATA_DIR).expanduser()
  if benchmark == "synthetic":  # generated here: no release directory
    return Synthetic(config=config or "reasoning", data_dir=str(data_dir))
  if benchmark not in BUILDERS:
    raise ValueError(f"unknown benchmark {benchmark!r}; known: {sorted([*BUILDERS, 'synthetic'])}")
  if manual_dir is None:
    raise ValueError(f"{benchmark}: pass manual_dir, the directory of its release files")
  manual_dir = pathlib.Path(manual_dir).expanduser()
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"{benchmark}: data directory {manual_dir} does not exist")
  return BUILDERS[benchmark](source_dir=manual_dir, data_dir=str(data_dir))


def load(
  benchmark: str,
  *,
  manual_dir: str | pathlib.Path | None = None,
  data_dir: str | pathlib.Path | None = None,
  split: str | None = None,
  rebuild: bool = False,
  config: str | None = None,
) -> Dataset:
  """The split of `benchmark` built from the release in `manual_dir`, cached under `data_dir`
  (default ~/tensorflow_datasets). The cache is keyed by the folder's content (base.fingerprint:
  every file's name, size and modification time), so the first load after an edit builds it
  again; `rebuild=True` (the entry points' `--rebuild`) forces a new build all the same.
  "synthetic" needs no release: `config` picks its task set."""
  b = builder(benchmark, manual_dir, data_dir, config)
  mode = tfds.download.GenerateMode
  config = tfds.download.DownloadConfig(
    download_mode=mode.REUSE_CACHE_IF_EXISTS if rebuild else mode.REUSE_DATASET_IF_EXISTS
  )
  b.download_and_prepare(download_config=config)
  splits = list(b.info.splits)
  if split is None and benchmark not in DEFAULT_SPLIT and len(splits) > 1:
    raise ValueError(f"{benchmark}: {manual_dir} has several splits {splits}; pass split=")
  split = split or DEFAULT_SPLIT.get(benchmark) or (splits[0] if splits else None)
  if split not in splits:
    raise ValueError(
      f"{benchmark}: split {split!r} not built from {manual_dir} (built: {splits}); add its files "
      "(a changed folder is built again on the next load; --rebuild, or rebuild=True, forces it)"
    )
  return Dataset(b.as_data_source(split), benchmark, split)


def step_indices(num: int, step: int, per_step: int, seed: int) -> list[int]:
  """The example indices of training `step`: epochs of seeded permutations of range(num), so
  the data position of a run is just its step number."""
  out = []
  for position in range(step * per_step, (step + 1) * per_step):
    epoch, offset = divmod(position, num)
    out.append(int(np.random.default_rng([seed, epoch]).permutation(num)[offset]))
  return out
