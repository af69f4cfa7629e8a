"""The resumable CA-TTS run (runner.Runner) on the scripted policy and Expert of
test_tts_methods.py: per-item errors, chunked draws, resume after a kill."""

from __future__ import annotations

import json

import pytest
from test_tts_methods import FakeOps, RoleExpert, config

from catts_jax.tts.methods import METHODS
from catts_jax.tts.runner import Runner


def strip(rows):
  """Rows without what varies from run to run (timings)."""
  out = []
  for r in rows:
    r = {k: v for k, v in r.items() if k != "timing"}
    if "expert_calls" in r:
      r["expert_calls"] = [{k: v for k, v in c.items() if k != "latency_s"} for c in r["expert_calls"]]
    out.append(r)
  return out


EXAMPLES = [{"id": str(i), "answer": "4"} for i in range(7)]
ALL_SAMPLES = {str(i): [("4", 0.5), (str(i), 0.6), ("4", 0.4), ("7", 0.9)] for i in range(7)}


def runner(ops, examples=EXAMPLES, expert=None, **cfg_kwargs):
  cfg = config()
  cfg.batch_size = 3
  cfg.update(cfg_kwargs)
  return Runner(ops, examples, ns=(1, 2, 4), methods=METHODS, expert=expert, cfg=cfg)


def test_run_records_bad_items_and_goes_on(tmp_path):
  examples = [*EXAMPLES[:2], {"id": "bad", "answer": "4", "bad": True}, *EXAMPLES[2:5]]
  ops = FakeOps(ALL_SAMPLES, fail_draw={"3"})
  rows = runner(ops, examples).run(tmp_path)
  assert [r["id"] for r in rows] == ["0", "1", "bad", "2", "3", "4"]
  errors = {r["id"]: r["error"] for r in rows if "error" in r}
  assert errors == {
    "bad": "bad: image 0 cannot be decoded",
    "3": "3: prompt length in tokens 9999 exceeds the largest bucket",
  }
  # The chunk ["2", "3", "4"] failed to draw together, then item by item.
  assert [ids for ids, _, _ in ops.draws] == [["0", "1"], ["2", "3", "4"], ["2"], ["3"], ["4"]]
  assert all(n == 4 for _, n, _ in ops.draws)
  assert set(rows[3]["methods"]["catts"]) == {"1", "2", "4"}


def test_unexpected_exception_fails_only_its_problem(tmp_path):
  ops = FakeOps(ALL_SAMPLES, fail_selfcheck=True)
  rows = runner(ops, EXAMPLES[:2]).run(tmp_path)
  assert [r["error"] for r in rows] == [
    "0: RuntimeError: scorer out of memory",
    "1: RuntimeError: scorer out of memory",
  ]


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
  expert = lambda: RoleExpert(planner=['{"order": ["SC", "SCk"]}'], voter=['{"A1": 0.5, "A2": 0.5}'])
  full_ops = FakeOps(ALL_SAMPLES)
  full = runner(full_ops, expert=expert()).run(tmp_path / "full")
  assert len(full) == 7 and not [r for r in full if "error" in r]

  # Killed after the rows of problems 0-3 (rows are written as problems finish, in any
  # order), in the middle of writing the row of 4.
  lines = {json.loads(line)["id"]: line for line in (tmp_path / "full" / "results.jsonl").open()}
  (tmp_path / "resumed").mkdir()
  (tmp_path / "resumed" / "results.jsonl").write_text("".join(lines[i] for i in "0123") + lines["4"][:40])
  ops = FakeOps(ALL_SAMPLES)
  resumed = runner(ops, expert=expert()).run(tmp_path / "resumed")
  assert strip(resumed) == strip(full)
  # Only the unfinished chunk ["3", "4", "5"] and the last one were drawn, with the same seeds.
  assert ops.draws == full_ops.draws[1:]
  # Nothing is left to do: a third run draws nothing.
  again = FakeOps(ALL_SAMPLES)
  assert len(runner(again, expert=expert()).run(tmp_path / "resumed")) == 7 and again.draws == []


def test_runner_rejects_bad_settings():
  with pytest.raises(ValueError, match="unknown method"):
    Runner(FakeOps({}), [], ns=(1,), methods=["beam"], expert=None, cfg=config())
  with pytest.raises(ValueError, match="positive"):
    Runner(FakeOps({}), [], ns=(0, 2), methods=["majority"], expert=None, cfg=config())
