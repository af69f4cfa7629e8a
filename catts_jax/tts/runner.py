"""CA-TTS on a benchmark: N samples per problem drawn once, every method and every N judged on
them (methods.solve), one row per problem streamed to results.jsonl.

  ops = PolicyOps(policy, "mathvision", cfg)             # cfg: configs/catts.py
  runner = Runner(ops, examples, ns=(1, 2, 4), methods=METHODS, expert=expert, cfg=cfg)
  rows = runner.run(pathlib.Path("runs/catts"))          # a rerun skips finished problems

Per problem the largest N is sampled once (several problems per sampler call). An expert
failure costs that module its vote, never the problem; any other exception fails the problem,
recorded with its error on its row, and the run goes on.

Resume: rows are keyed by problem id. Problems are drawn in fixed chunks of `batch_size` by
position, seeded by the chunk's ids, and a chunk with any unfinished problem is drawn again
whole, so a killed and resumed run writes the same rows as an uninterrupted one (latencies and
timings aside).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from catts_jax import runs
from catts_jax.tts.context import stable_seed
from catts_jax.tts.expert import Expert
from catts_jax.tts.methods import METHODS, SAMPLED, solve
from catts_jax.tts.policy_ops import PolicyOps


def error_message(problem_id: str, error: BaseException) -> str:
  text = str(error) or type(error).__name__
  if not isinstance(error, ValueError | OSError):
    text = f"{type(error).__name__}: {text}"
  return text if problem_id in text else f"{problem_id}: {text}"


def _each(items: list, fn: Callable[[list], list]) -> list:
  """fn over a batch; if the batch fails, item by item, so an error lands on the item that
  caused it (as that item's result)."""
  if not items:
    return []
  try:
    return list(fn(items))
  except Exception as e:  # noqa: BLE001 - recorded on the item
    if len(items) == 1:
      return [e]
    return [r for item in items for r in _each([item], fn)]


class Runner:
  def __init__(
    self,
    ops: PolicyOps,
    examples: Sequence[dict],
    *,
    ns: Sequence[int],
    methods: Sequence[str],
    expert: Expert | None,
    cfg,
  ):
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
      raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if not ns or any(n < 1 for n in ns):
      raise ValueError(f"N must be positive integers, got {list(ns)}")
    self.ops, self.examples, self.expert, self.cfg = ops, list(examples), expert, cfg
    self.ns, self.methods = sorted(set(ns)), list(dict.fromkeys(methods))

  def _chunk(self, chunk: list[tuple[int, dict]], pending: set[int]) -> Iterator[dict[str, Any]]:
    problems, failed = [], {}
    for i, example in chunk:
      try:
        problems.append(self.ops.prepare(i, example))
      except Exception as e:  # noqa: BLE001 - recorded on the item
        failed[i] = e
    drawn = greedy = vcd = [None] * len(problems)
    if any(m in SAMPLED for m in self.methods):
      nmax = self.ns[-1]
      drawn = _each(
        problems, lambda ps: self.ops.draw(ps, nmax, stable_seed(self.cfg.seed, "draw", [p.id for p in ps]))
      )
    if "greedy" in self.methods:
      greedy = _each(problems, lambda ps: self.ops.decode(ps))
    if "vcd" in self.methods or ("catts" in self.methods and self.cfg.selfcheck.vcd_weight > 0):
      vcd = _each(problems, lambda ps: self.ops.decode(ps, vcd=True))
    by_index = {p.index: (p, d, g, v) for p, d, g, v in zip(problems, drawn, greedy, vcd)}
    for i, example in chunk:
      if i not in pending:
        continue
      problem_id = str(example.get("id", i))
      error = failed.get(i)
      if error is None:
        problem, *parts = by_index[i]
        error = next((x for x in parts if isinstance(x, BaseException)), None)
      if error is None:
        try:
          kwargs = dict(ns=self.ns, methods=self.methods, expert=self.expert, ops=self.ops, cfg=self.cfg)
          yield solve(problem, *parts, **kwargs)
          continue
        except Exception as e:  # noqa: BLE001 - recorded on the item
          error = e
      yield {"id": problem_id, "index": i, "error": error_message(problem_id, error)}

  def run(self, out_dir: pathlib.Path, progress: Callable[[int], Any] | None = None) -> list[dict[str, Any]]:
    """Streams one row per unfinished problem to out_dir/results.jsonl; returns all rows."""
    path = pathlib.Path(out_dir) / "results.jsonl"
    size = max(1, int(self.cfg.batch_size))
    indexed = list(enumerate(self.examples))
    with runs.appending(path) as write:  # trims a line cut off by a kill before the rows are read
      done = {str(r["id"]) for r in runs.read_rows(path)}
      if progress:
        progress(sum(str(ex.get("id")) in done for ex in self.examples))
      for start in range(0, len(indexed), size):
        chunk = indexed[start : start + size]
        pending = {i for i, ex in chunk if str(ex.get("id", i)) not in done}
        if not pending:
          continue
        for row in self._chunk(chunk, pending):
          write(row)
          done.add(str(row["id"]))
          if progress:
            progress(1)
    return runs.read_rows(path)
