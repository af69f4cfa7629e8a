"""The batched CA-TTS engine (engine.run through runner.Runner) on the scripted policy of
test_tts_methods.py and an Expert whose replies depend only on what it is asked: it equals the
one-problem-at-a-time reference, batches the policy's work across problems, runs Expert calls
concurrently, and a failing or hanging Expert costs only its own votes."""

from __future__ import annotations

import collections
import re
import threading
import time

import pytest
from test_tts_methods import FakeOps, config
from test_tts_runner import strip

from catts_jax.tts import expert as ex
from catts_jax.tts.critic import CRITIC_SYSTEM
from catts_jax.tts.planner import PLANNER_SYSTEM
from catts_jax.tts.runner import Runner
from catts_jax.tts.voter import VOTER_SYSTEM, vote_ask

ROLES = {PLANNER_SYSTEM: "planner", VOTER_SYSTEM: "voter", CRITIC_SYSTEM: "critic"}
ORDERS = [
  '{"order": ["self_consistency", "self_reflection", "visual_self_check"]}',
  '{"order": ["visual_self_check", "self_consistency"]}',
  '{"order": ["self_reflection", "self_consistency", "visual_self_check"]}',
  "no plan here",  # unparseable: the default order, recorded as a fallback
]


class ContentExpert(ex.Expert):
  """Replies from the request's content alone (problem id, candidates, response), never from
  the order of calls, so any interleaving of problems gets the same replies. `sleep_s` per
  call; `hang` {problem id: seconds} sleeps and then times out; `fail` {(problem id, role)}."""

  name = "content"

  def __init__(self, sleep_s=0.0, hang=None, fail=()):
    super().__init__(ex.RetryPolicy(max_retries=0))
    self.sleep_s, self.hang, self.fail = sleep_s, hang or {}, set(fail)
    self.lock, self.in_flight, self.most_in_flight, self.calls = threading.Lock(), 0, 0, 0
    self.by_problem = collections.Counter()

  def _send(self, messages, max_tokens, temperature):
    role, text = ROLES[messages[0]["content"]], messages[1]["content"][-1]["text"]
    problem = re.search(r"question (\d+)", text).group(1)
    with self.lock:
      self.calls += 1
      self.by_problem[problem] += 1
      self.in_flight += 1
      self.most_in_flight = max(self.most_in_flight, self.in_flight)
    try:
      time.sleep(self.hang.get(problem, self.sleep_s))
      if problem in self.hang:
        raise ex.Retryable(f"timeout after {self.hang[problem]:g} s")
      if (problem, role) in self.fail:
        raise ex.Fatal("HTTP 400: bad request")
      if role == "planner":
        return ORDERS[int(problem) % len(ORDERS)]
      if role == "voter":
        return '{"A1": 0.7, "A2": 0.3}' if "A2:" in text else '{"A1": 1.0}'
      return f"Recount the parts of problem {problem}: the response has {len(text)} characters."
    finally:
      with self.lock:
        self.in_flight -= 1


class SeededOps(FakeOps):
  """FakeOps whose re-answer depends on its seed (so each problem's differs)."""

  def reanswer_all(self, requests):
    out = super().reanswer_all(requests)
    for r, new in zip(requests, out):
      new.answer = str(3 + r.seed % 3)
      new.correct = new.answer == r.problem.example["answer"]
    return out


EXAMPLES = [{"id": str(i), "answer": "4"} for i in range(12)]
SAMPLES = {str(i): [(str(3 + (i + j) % 3), 0.3 + 0.1 * ((i * j) % 5)) for j in range(4)] for i in range(12)}
SELFCHECK = {"3": (0.9, 0.85), "4": (0.8, 0.2), "5": (0.6, 0.7)}


def run(tmp_path, expert, examples=EXAMPLES, samples=SAMPLES, ns=(1, 2, 4), methods=None, **cfg_kwargs):
  cfg = config(reflection_threshold=1.01, selfcheck_margin=1.01)  # every gate open
  cfg.batch_size, cfg.solve_batch = 3, 12
  cfg.expert.concurrency = cfg_kwargs.pop("concurrency", cfg.expert.concurrency)
  cfg.update(cfg_kwargs)
  ops = SeededOps(samples, SELFCHECK)
  methods = methods or ["catts", "majority", "greedy", "vcd"]
  rows = Runner(ops, examples, ns=ns, methods=methods, expert=expert, cfg=cfg).run(tmp_path)
  return rows, ops


def test_batched_equals_serial_and_batches_the_policy(tmp_path):
  serial, serial_ops = run(tmp_path / "serial", ContentExpert(), serial=True)
  batched, batched_ops = run(tmp_path / "batched", ContentExpert())
  assert strip(batched) == strip(serial)
  assert [r["id"] for r in batched] == [e["id"] for e in EXAMPLES] and not any("error" in r for r in batched)
  # Every module ran somewhere: re-answers, self-checks, voter and planner (with a fallback).
  calls = [c for r in batched for c in r["expert_calls"]]
  assert {c["role"] for c in calls} == {"planner", "voter", "critic"} and any(c["fallback"] for c in calls)
  assert len({r["methods"]["catts"]["4"]["answer"] for r in batched}) > 1
  # The same work, batched: serial asks the policy one problem at a time, batched all at once.
  assert {size for _, size in serial_ops.batches} == {1}
  assert max(size for _, size in batched_ops.batches) > 3  # across draw chunks of 3
  assert sorted(batched_ops.reanswers) == sorted(serial_ops.reanswers)
  assert sorted(map(str, batched_ops.scored)) == sorted(map(str, serial_ops.scored))
  # With module_batch (an accelerator's setting) policy calls take at most that many requests,
  # gathered while the Expert works; the rows are the same.
  capped, capped_ops = run(tmp_path / "capped", ContentExpert(sleep_s=0.01), module_batch=4)
  assert strip(capped) == strip(serial)
  assert 1 < max(size for _, size in capped_ops.batches) <= 4


def test_expert_calls_run_concurrently(tmp_path):
  """32 problems, an Expert that takes 0.5 s a call: at most a quarter of the serial time
  (which is at least calls x 0.5 s: serial makes the same calls one after another)."""
  examples = [{"id": str(i), "answer": "4"} for i in range(32)]
  samples = {str(i): SAMPLES[str(i % 12)] for i in range(32)}
  expert = ContentExpert(sleep_s=0.5)
  start = time.monotonic()
  rows, _ = run(
    tmp_path, expert, examples, samples, ns=(4,), methods=["catts"], solve_batch=32, concurrency=16
  )
  wall = time.monotonic() - start
  assert len(rows) == 32 and not any("error" in r for r in rows)
  serial_floor = 0.5 * expert.calls
  assert expert.calls >= 64 and wall <= serial_floor / 4, (wall, serial_floor)
  assert expert.most_in_flight == 16  # the expert.concurrency bound, reached


def test_draws_overlap_the_expert_and_problems_in_flight_stay_bounded(tmp_path):
  """The next chunk is drawn while the Expert answers the last one's calls (the policy is not
  left idle), and no more than solve_batch problems are drawn and unfinished at once."""
  expert = ContentExpert(sleep_s=0.2)

  class WatchedOps(SeededOps):
    def __init__(self, *args):
      super().__init__(*args)
      self.expert_busy, self.unfinished = [], []

    def draw(self, problems, n, seed):
      self.expert_busy.append(expert.in_flight > 0)
      self.unfinished.append(len({p for d in self.draws for p in d[0]}) - len(written(tmp_path)))
      return super().draw(problems, n, seed)

  cfg = config(reflection_threshold=1.01, selfcheck_margin=1.01)
  cfg.batch_size, cfg.solve_batch = 3, 6
  ops = WatchedOps(SAMPLES, SELFCHECK)
  rows = Runner(ops, EXAMPLES, ns=(1, 2, 4), methods=["catts"], expert=expert, cfg=cfg).run(tmp_path)
  assert len(rows) == 12 and not any("error" in r for r in rows)
  assert len(ops.draws) == 4 and not ops.expert_busy[0] and any(ops.expert_busy[1:])
  assert max(ops.unfinished) <= 6 - 3  # a chunk of 3 is drawn only while at most 3 are unfinished


def written(out):
  path = out / "results.jsonl"
  return path.read_text().splitlines() if path.is_file() else []


def test_failing_and_hanging_expert_cost_only_their_votes(tmp_path):
  healthy, _ = run(tmp_path / "healthy", ContentExpert())
  expert = ContentExpert(sleep_s=0.1, hang={"3": 0.5}, fail={("5", "voter")})
  start = time.monotonic()
  faulty, _ = run(tmp_path / "faulty", expert)
  wall = time.monotonic() - start
  # The other problems' calls (0.1 s each) go on beside the hung ones: the run takes about the
  # hung problem's own waits, against their sum plus every other call's one after another.
  hung_s = 0.5 * expert.by_problem["3"]
  serial_floor = hung_s + 0.1 * (expert.calls - expert.by_problem["3"])
  assert wall <= hung_s + 1.5 < serial_floor, (wall, hung_s, serial_floor)
  assert not any("error" in r for r in faulty)
  for good, bad in zip(strip(healthy), strip(faulty)):
    if bad["id"] not in ("3", "5"):
      assert bad == good  # other problems: untouched
  hung = faulty[3]["methods"]["catts"]["4"]
  assert hung["plan"] == {"by": "default", "reason": "planner failed: timeout after 0.5 s"}
  assert hung["modules"][0]["voter"] == {"ran": False, "reason": "voter failed: timeout after 0.5 s"}
  assert hung["answer"]  # the samples' confidence-weighted vote still answers
  failed_voter = faulty[5]["methods"]["catts"]["4"]["modules"]
  voter = next(m for m in failed_voter if m["module"] == "self_consistency")["voter"]
  assert voter == {"ran": False, "reason": "voter failed: HTTP 400: bad request"}
  assert faulty[5]["methods"]["majority"] == healthy[5]["methods"]["majority"]


def test_expert_ask_many_returns_errors_in_place():
  expert = ContentExpert(fail={("1", "voter")})
  asks = [vote_ask(f"question {i}", [], ["3", "4"]) for i in range(3)]
  got = expert.ask_many(asks, concurrency=3)
  assert [type(g).__name__ for g in got] == ["tuple", "ExpertError", "tuple"]
  assert got[0][0] == {"3": 0.7, "4": 0.3} and got[1].record.error == "HTTP 400: bad request"
  with pytest.raises(ex.ExpertError):
    expert.ask(asks[1])


def test_programming_errors_propagate_other_failures_are_records():
  """A bug (TypeError, ImportError, ...) in an Expert call stops the run; trouble with the
  Expert (here a ValueError) is a failed call returned to the problem that asked."""

  class Broken(ex.Expert):
    name = "broken"

    def __init__(self, error):
      super().__init__(ex.RetryPolicy(max_retries=0))
      self.error = error

    def _send(self, messages, max_tokens, temperature):
      raise self.error

  ask = vote_ask("How many?", [], ["3", "4"], max_tokens=8)
  for error in (TypeError("bad argument"), ImportError("no module")):
    with pytest.raises(type(error)):
      Broken(error).ask_many([ask, ask], concurrency=2)
  got = Broken(ValueError("refused")).ask_many([ask, ask], concurrency=2)
  assert all(isinstance(g, ex.ExpertError) and "ValueError: refused" in g.record.error for g in got)
