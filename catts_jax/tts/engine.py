"""Answers the requests of CA-TTS's modules, for many problems at a time.

  rows = dict(engine.run({problem_id: solve(...), ...}, ops, expert, concurrency=8))
  rows = dict(engine.run({}, ops, expert, feed=next_chunk, in_flight=32))  # problems as drawn
  row = engine.serial(solve(...), ops, expert)      # one problem, request by request

Each problem's work is a generator (`methods.solve`) that yields what it needs next: an Expert
call, a re-answer by the policy or self-check scores (context.py's requests). `run` holds every
problem at its next request. Expert calls leave as soon as they are asked, on a pool of
`concurrency` threads (one call per thread for a remote expert, so a slow call holds up no
other; an expert that `batches`, the `self` one, gets everything asked so far as one list,
one list at a time). Meanwhile the policy answers what waits for it: re-answers in one decode,
self-check scores in one pass, `batch` requests a call; with `batch` 0 it waits until no
Expert call is out, so that a round's requests share a call. When the policy has nothing to
do, `feed` brings more problems (a draw: the policy's work overlaps the Expert's), up to
`in_flight` unfinished at once. A batch that fails is answered again one request at a time,
so an error reaches only the problem that caused it; an ExpertError is thrown into its
problem (the module loses its vote), any other error fails that problem.

`serial` answers one problem's requests one by one, in order: the reference `run` must equal.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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


def _reply(reply: Any) -> Any:
  return _Failed(reply) if isinstance(reply, BaseException) else reply


def _answer_policy(requests: Sequence[Request], ops: Ops) -> list:
  """The requests' re-answers in one decode and their self-check scores in one pass."""
  answers: list = [None] * len(requests)
  for kind, fn in ((Reanswer, ops.reanswer_all), (SelfcheckScores, ops.selfcheck_all)):
    index = [i for i, r in enumerate(requests) if isinstance(r, kind)]
    for i, answer in zip(index, each([requests[i] for i in index], fn)):
      answers[i] = _reply(answer)
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
  problems: Mapping[Hashable, Steps],
  ops: Ops,
  expert: Expert | None,
  concurrency: int = 1,
  batch: int = 0,
  feed: Callable[[], Mapping[Hashable, Steps]] | None = None,
  in_flight: int = 0,
) -> Iterator[tuple[Hashable, Any]]:
  """(key, result) for every problem as it finishes: its row, or the exception that failed it.
  `concurrency`: Expert calls out at once; `batch`: requests per policy call (0: all that wait
  once no Expert call is out); `feed()`: more problems ({} when there are none), asked for
  while fewer than `in_flight` (0: any number) are unfinished and the policy is idle."""
  policy: dict[Hashable, tuple[Steps, Request]] = {}  # waiting for the policy
  asked: dict[Hashable, tuple[Steps, Request]] = {}  # waiting to be sent to the Expert
  out: dict[Future, list[tuple[Hashable, Steps]]] = {}  # sent, by the call (or list) that answers
  finished: list[tuple[Hashable, Any]] = []
  live, fed = 0, feed is not None

  def route(key: Hashable, steps: Steps, answer: Any) -> None:
    nonlocal live
    request, result = _advance(steps, answer)
    if request is None:
      live -= 1
      finished.append((key, result))
    elif isinstance(request, ExpertRequest):
      if expert is None:
        raise RuntimeError("a module asked the Expert, but the run has none")
      asked[key] = (steps, request)
    else:
      policy[key] = (steps, request)

  def start(more: Mapping[Hashable, Steps]) -> None:
    nonlocal live
    live += len(more)
    for key, steps in more.items():
      route(key, steps, None)

  with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="expert") as pool:
    start(problems)
    while True:
      yield from finished
      finished.clear()
      for future in [f for f in out if f.done()]:
        for (key, steps), reply in zip(out.pop(future), future.result()):
          route(key, steps, _reply(reply))
      if asked and not (expert.batches and out):
        if expert.batches:
          out[pool.submit(expert.ask_many, [r.ask for _, r in asked.values()])] = [
            (k, steps) for k, (steps, _) in asked.items()
          ]
        else:
          for key, (steps, request) in asked.items():
            out[pool.submit(lambda ask: [expert.answer(ask)], request.ask)] = [(key, steps)]
        asked.clear()
      if policy and (not out or (batch and len(policy) >= batch)):
        keys = list(policy)[: batch or None]
        waiting = [policy.pop(k) for k in keys]
        answers = _answer_policy([r for _, r in waiting], ops)
        for key, (steps, _), answer in zip(keys, waiting, answers):
          route(key, steps, answer)
      elif fed and (not in_flight or live < in_flight):
        more = feed()
        fed = bool(more)
        start(more)
      elif out:
        wait(out, return_when=FIRST_COMPLETED)
      elif not (policy or asked or finished):
        return


def serial(steps: Steps, ops: Ops, expert: Expert | None) -> Any:
  """One problem's result, request by request; raises what failed it."""
  ((_, result),) = run({0: steps}, ops, expert)
  if isinstance(result, BaseException):
    raise result
  return result
