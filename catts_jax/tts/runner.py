"""CA-TTS on a benchmark: N samples per problem drawn once, every method and every N judged on
them (methods.solve), one row per problem streamed to results.jsonl.

  ops = PolicyOps(policy, "mathvision", cfg)             # cfg: configs/catts.py
  runner = Runner(ops, examples, ns=(1, 2, 4), methods=METHODS, expert=expert, cfg=cfg)
  rows = runner.run(pathlib.Path("runs/catts"))          # a rerun skips finished problems

Per problem the largest N is sampled once (`batch_size` problems per sampler call). Drawn
problems go through the modules together, up to `solve_batch` at once (engine.run: concurrent
Expert calls, batched re-answers and self-checks); the next chunk is drawn whenever the policy
would otherwise wait for the Expert. `serial` solves the problems one at a time instead, the
reference the batched engine equals. An expert failure costs that
module its vote, never the problem; any other exception fails the problem, recorded with its
error on its row, and the run goes on. Rows are written as problems finish; `run` returns them
in benchmark order.

Resume: rows are keyed by problem id. Problems are drawn in fixed chunks of `batch_size` by
position, and a chunk with any unfinished problem is drawn again whole (the same shapes, so the
same float rounding). Every draw and every later request is seeded by its problem and content,
never by its batch, so a killed and resumed run writes the same rows as an uninterrupted one
(latencies and timings aside; floats to float32 rounding where a problem's batch differs).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from catts_jax import runs
from catts_jax.tts import engine
from catts_jax.tts.context import Steps, stable_seed
from catts_jax.tts.expert import Expert
from catts_jax.tts.methods import METHODS, SAMPLED, SELF_CHECKING, solve
from catts_jax.tts.policy_ops import PolicyOps


def _raising(error: BaseException) -> Steps:
  """Steps that fail at once with `error` (a problem whose draw failed)."""
  raise error
  yield  # a generator, like solve's


def error_message(problem_id: str, error: BaseException) -> str:
  text = str(error) or type(error).__name__
  if not isinstance(error, ValueError | OSError):
    text = f"{type(error).__name__}: {text}"
  return text if problem_id in text else f"{problem_id}: {text}"


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

  def _draw(self, chunk: list[tuple[int, dict]]) -> dict[int, tuple | BaseException]:
    """Per problem of a chunk: (problem, drawn, greedy, vcd), or what failed it."""
    problems, out = [], {}
    for i, example in chunk:
      try:
        problems.append(self.ops.prepare(i, example))
      except Exception as e:  # noqa: BLE001 - recorded on the item
        out[i] = e
    drawn = greedy = vcd = [None] * len(problems)
    if any(m in SAMPLED for m in self.methods):
      nmax = self.ns[-1]
      drawn = engine.each(problems, lambda ps: self.ops.draw(ps, nmax, stable_seed(self.cfg.seed, "draw")))
    if "greedy" in self.methods:
      greedy = engine.each(problems, lambda ps: self.ops.decode(ps))
    checking = any(m in self.methods for m in SELF_CHECKING)
    if "vcd" in self.methods or (checking and self.cfg.selfcheck.mode != "drop"):
      vcd = engine.each(problems, lambda ps: self.ops.decode(ps, vcd=True))
    for p, *parts in zip(problems, drawn, greedy, vcd):
      out[p.index] = next((x for x in parts if isinstance(x, BaseException)), (p, *parts))
    return out

  def _steps(self, chunk: list[tuple[int, dict]], pending: set[int]) -> dict[int, Steps]:
    """A chunk drawn: the steps of its pending problems (one whose draw failed raises it)."""
    kwargs = dict(ns=self.ns, methods=self.methods, cfg=self.cfg, expert=self.expert)
    return {
      i: _raising(got) if isinstance(got, BaseException) else solve(*got, **kwargs)
      for i, got in self._draw(chunk).items()
      if i in pending
    }

  def run(self, out_dir: pathlib.Path, progress: Callable[[int], Any] | None = None) -> list[dict[str, Any]]:
    """Streams one row per unfinished problem to out_dir/results.jsonl; returns all rows, in
    benchmark order."""
    path = pathlib.Path(out_dir) / "results.jsonl"
    size = max(1, int(self.cfg.batch_size))
    ids = {i: str(example.get("id", i)) for i, example in enumerate(self.examples)}
    indexed = list(enumerate(self.examples))
    chunks = [indexed[start : start + size] for start in range(0, len(indexed), size)]
    with runs.appending(path) as write:  # trims a line cut off by a kill before the rows are read
      done = {str(r["id"]) for r in runs.read_rows(path, required="id")}
      if progress:
        progress(sum(ids[i] in done for i in ids))
      todo = [(chunk, {i for i, _ in chunk if ids[i] not in done}) for chunk in chunks]
      todo = [(chunk, pending) for chunk, pending in todo if pending]
      if self.cfg.serial:
        results = (
          (i, result)
          for chunk, pending in todo
          for i, steps in self._steps(chunk, pending).items()
          for _, result in engine.run({i: steps}, self.ops, self.expert)
        )
      else:
        queue = iter(todo)
        # A chunk is drawn while at most solve_batch - batch_size problems are unfinished.
        in_flight = max(1, int(self.cfg.solve_batch) - size + 1)
        results = engine.run(
          {}, self.ops, self.expert, self.cfg.expert.concurrency, self.cfg.module_batch,
          feed=lambda: self._steps(*next(queue, ([], set()))), in_flight=in_flight,
        )  # fmt: skip
      for i, result in results:
        if isinstance(result, BaseException):
          result = {"id": ids[i], "index": i, "error": error_message(ids[i], result)}
        write(result)
        if progress:
          progress(1)
    order = {problem_id: i for i, problem_id in ids.items()}
    return sorted(runs.read_rows(path, required="id"), key=lambda r: order.get(str(r["id"]), len(order)))
