"""Weighted mixtures of datasets, e.g. a CDRL training set drawn from several benchmarks
(the paper: 1,936 problems from six).

Counts are proportional to the weights (largest-remainder rounding, so they sum to `size`) and
each source is sampled without replacement with a seeded generator: the same call gives the same
set. Examples keep their `benchmark`, so each is graded by its own rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def counts(weights: Sequence[float], size: int) -> list[int]:
  w = np.asarray(weights, dtype=np.float64)
  if size < 0 or w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
    raise ValueError(f"need size >= 0 and non-negative weights with a positive sum, got {size}, {list(w)}")
  exact = w / w.sum() * size
  out = np.floor(exact).astype(int)
  for i in np.argsort(-(exact - out), kind="stable")[: size - out.sum()]:
    out[i] += 1
  return out.tolist()


class Mixture(Sequence):
  """A fixed draw from several sources; `manifest` lists (source, index, id) per example."""

  def __init__(self, sources: Mapping[str, Sequence[Mapping[str, Any]]], picks: list[tuple[str, int]]):
    self.sources = dict(sources)
    self.picks = picks

  def __len__(self) -> int:
    return len(self.picks)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    name, index = self.picks[i]
    return {**self.sources[name][index], "source": name}

  @property
  def manifest(self) -> list[tuple[str, int, str]]:
    return [(name, index, self.sources[name][index]["id"]) for name, index in self.picks]


def mix(
  sources: Mapping[str, Sequence[Mapping[str, Any]]],
  size: int,
  weights: Mapping[str, float] | None = None,
  seed: int = 0,
  shuffle: bool = True,
) -> Mixture:
  """Draw `size` examples from named sources in proportion to `weights` (default: source sizes)."""
  names = list(sources)
  w = [float(weights[n]) if weights is not None else float(len(sources[n])) for n in names]
  if weights is not None and set(weights) - set(names):
    raise ValueError(f"weights for unknown sources {sorted(set(weights) - set(names))}")
  rng = np.random.default_rng(seed)
  picks: list[tuple[str, int]] = []
  for name, k in zip(names, counts(w, size)):
    if k > len(sources[name]):
      raise ValueError(f"source {name!r} has {len(sources[name])} examples, {k} requested")
    picks += [(name, int(i)) for i in sorted(rng.choice(len(sources[name]), size=k, replace=False))]
  if shuffle:
    picks = [picks[i] for i in rng.permutation(len(picks))]
  return Mixture(sources, picks)
