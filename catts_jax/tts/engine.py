"""Answers the requests of CA-TTS's modules, for many problems at a time.

  rows = dict(engine.run({problem_id: solve(...), ...}, ops, expert, concurrency=8))
  row = engine.serial(solve(...), ops, expert)      # one problem, request by request

Each problem's work is a generator (`methods.solve`) that yields what it needs next: an Expert
call, a re-answer by the policy or self-check scores (context.py's requests). `run` holds every
problem at its next request and answers them a round at a time: the round's Expert calls at
once (`Expert.ask_many`: a bounded pool of threads for a remote expert, one batched decode for
`self`), its re-answers in one policy decode, its self-check scores in one scoring pass. The
Expert's calls run on a thread while the policy works. A batch that fails is answered again
one request at a time, so an error reaches only the problem that caused it; an ExpertError is
thrown into its problem (the module loses its vote), any other error fails that problem.

`serial` answers one problem's requests one by one, in order: the reference `run` must equal.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from catts_jax.tts.context import ExpertRequest, Ops, Reanswer, Request, SelfcheckScores, Steps
from catts_jax.tts.expert import Expert


class _Failed:
  """An answer that is an exception to throw into the problem that asked."""

  def __init__(self, error: BaseException):
    self.error = error


def each(items: list, fn: Callable[[list], list]) -> list:
  """fn over a batch; if the batch fails, item by item, so an error lands on the item that
  caused it (as that item's result)."""
  if not items:
    return []
  try:
    results = list(fn(items))
  except Exception as e:  # noqa: BLE001 - handed to the item that caused it
    if len(items) == 1:
      return [e]
    return [r for item in items for r in each([item], fn)]
  if len(results) != len(items):
    raise RuntimeError(f"{len(results)} results for {len(items)} items")
  return results


def _answer_policy(requests: Sequence[Request], ops: Ops, batch: int) -> list:
  """The round's re-answers in one decode and its self-check scores in one pass, each at most
  `batch` requests a call (0: no limit)."""
  answers: list = [None] * len(requests)
  for kind, fn in ((Reanswer, ops.reanswer_all), (SelfcheckScores, ops.selfcheck_all)):
    index = [i for i, r in enumerate(requests) if isinstance(r, kind)]
    size = batch or max(len(index), 1)
    for start in range(0, len(index), size):
      part = index[start : start + size]
      for i, answer in zip(part, each([requests[i] for i in part], fn)):
        answers[i] = _Failed(answer) if isinstance(answer, BaseException) else answer
  return answers


def _advance(steps: Steps, answer: Any) -> tuple[Request | None, Any]:
  """Sends `answer` (None to start); returns (next request, None) or (None, the result: a row
  or the exception that ended the problem)."""
  try:
    if isinstance(answer, _Failed):
      return steps.throw(answer.error), None
    return steps.send(answer), None
  except StopIteration as stop:
    return None, stop.value
  except Exception as e:  # noqa: BLE001 - the problem's own failure, returned as its result
    return None, e


def run(
  problems: Mapping[Hashable, Steps], ops: Ops, expert: Expert | None, concurrency: int = 1, batch: int = 0
) -> Iterator[tuple[Hashable, Any]]:
  """(key, result) for every problem as it finishes: its row, or the exception that failed it.
  `concurrency`: Expert calls in flight at once; `batch`: requests per policy call (0: all of
  a round's)."""
  pending: dict[Hashable, tuple[Steps, Request]] = {}
  for key, steps in problems.items():
    request, result = _advance(steps, None)
    if request is None:
      yield key, result
    else:
      pending[key] = (steps, request)
  with ThreadPoolExecutor(1, thread_name_prefix="expert-round") as background:
    while pending:
      keys = list(pending)
      requests = [pending[k][1] for k in keys]
      asked = [i for i, r in enumerate(requests) if isinstance(r, ExpertRequest)]
      calls = None
      if asked:
        if expert is None:
          raise RuntimeError("a module asked the Expert, but the run has none")
        calls = background.submit(expert.ask_many, [requests[i].ask for i in asked], concurrency)
      answers = _answer_policy(requests, ops, batch)
      if calls is not None:
        for i, reply in zip(asked, calls.result()):
          answers[i] = _Failed(reply) if isinstance(reply, BaseException) else reply
      for key, answer in zip(keys, answers):
        steps = pending.pop(key)[0]
        request, result = _advance(steps, answer)
        if request is None:
          yield key, result
        else:
          pending[key] = (steps, request)


def serial(steps: Steps, ops: Ops, expert: Expert | None) -> Any:
  """One problem's result, request by request; raises what failed it."""
  ((_, result),) = run({0: steps}, ops, expert)
  if isinstance(result, BaseException):
    raise result
  return result
