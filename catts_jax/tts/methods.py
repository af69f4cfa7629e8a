"""CA-TTS and its baselines on one problem: every method at every N, judged on the same samples.

  steps = solve(problem, drawn, greedy, vcd, ns=(1, 2, 4), methods=METHODS, cfg=cfg, expert=expert)
  row = engine.serial(steps, ops, expert)   # or many problems' steps at once: engine.run

N < max uses the first N of the drawn samples, so methods and N compare on the same samples.
At each N:
- CA-TTS (`run_catts`): the Expert as Planner gives the module order (the paper's: once per
  problem from image + question, all three modules; the adaptive one: per N, from the samples
  too, may skip modules; no expert, a failed call or an unparseable plan: SC -> SR -> SCk);
  the modules write into one VoteTable:
  Self-Consistency (confidence-weighted votes, then the Expert as Voter adds tau * N),
  Self-Reflection (reflection.py) and Visual Self-Check (selfcheck.py). A plan that skips SC
  and leaves the table without an answer gets the SC votes after all (recorded).
- Baselines (`baseline`): majority vote, DeepConf offline and online (replayed, deepconf.py),
  best-of-N by confidence. Greedy and VCD decoding are one decode each, independent of N.
An expert failure costs that module its vote, never the problem (context.py memoises the
expert's answers across N).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from catts_jax.tts import deepconf, voting
from catts_jax.tts.context import Context, Drawn, Memo, Problem, Response, Steps
from catts_jax.tts.expert import Expert, ExpertError
from catts_jax.tts.planner import (
  DEFAULT_ORDER,
  SELF_CONSISTENCY,
  SELF_REFLECTION,
  VISUAL_SELF_CHECK,
  candidate_summary,
  plan_ask,
)
from catts_jax.tts.reflection import self_reflection
from catts_jax.tts.selfcheck import visual_self_check
from catts_jax.tts.voter import vote_ask

# CA-TTS module by module, on the same samples and the same Expert answers (memoised): the
# modules run in the default order without the Planner; "sc" is the confidence-weighted vote
# alone, "voter-alone" the Expert's own pick among the sampled answers.
ABLATIONS = {
  "sc+voter": (SELF_CONSISTENCY,),
  "sc+voter+sr": (SELF_CONSISTENCY, SELF_REFLECTION),
  "sc+voter+sr+sck": (SELF_CONSISTENCY, SELF_REFLECTION, VISUAL_SELF_CHECK),
}
METHODS = (
  "catts", "majority", "deepconf", "deepconf-online", "best-of-n", "greedy", "vcd", "sc", *ABLATIONS, "voter-alone",
)  # fmt: skip
# What a run computes unless --methods says otherwise (the ablations are asked for by name).
DEFAULT_METHODS = ("catts", "majority", "deepconf", "deepconf-online", "best-of-n", "greedy", "vcd")
SAMPLED = ("catts", "majority", "deepconf", "deepconf-online", "best-of-n", "sc", *ABLATIONS, "voter-alone")
# Methods whose Visual Self-Check needs the problem's VCD decode.
SELF_CHECKING = ("catts", *(m for m, modules in ABLATIONS.items() if VISUAL_SELF_CHECK in modules))


def expert_votes(ctx: Context, candidates: Sequence[str]) -> Steps:
  """The Expert as Voter's probabilities over `candidates` (memoised across N and methods).
  A lone candidate gets 1.0 without a call: every reply the Voter reads is renormalised over
  the candidates, so a call could only cost time (or, failing, the vote)."""
  if len(candidates) == 1:
    return {candidates[0]: 1.0}
  e = ctx.cfg.expert
  return (
    yield from ctx.ask(
      ("voter", tuple(candidates)),
      vote_ask(
        ctx.problem.question,
        ctx.problem.images,
        candidates,
        max_tokens=e.voter_max_tokens,
        temperature=e.temperature,
        style=ctx.cfg.prompts,
      ),
    )  # fmt: skip
  )


def self_consistency(ctx: Context, table: voting.VoteTable) -> Steps:
  """Confidence-weighted votes of the N samples, then the Expert as Voter over the table's
  candidates (tau * N, split by its probabilities)."""
  voting.confidence_weighted(ctx.answers(), ctx.confidences(), table)
  record: dict[str, Any] = {"module": SELF_CONSISTENCY, "ran": True, "votes": ctx.n}
  candidates = list(table.weights())
  if ctx.expert is None:
    record["voter"] = {"ran": False, "reason": "no expert"}
    return record
  if not candidates:
    record["voter"] = {"ran": False, "reason": "no candidate answers"}
    return record
  try:
    probs = yield from expert_votes(ctx, candidates)
  except ExpertError as err:
    record["voter"] = {"ran": False, "reason": f"voter failed: {err.record.error}"}
    return record
  added = voting.voter_boost(table, probs, ctx.boost(ctx.tts.tau, voter=True))
  record["voter"] = {"ran": True, "probs": probs, "added": added}
  return record


MODULES = {
  SELF_CONSISTENCY: self_consistency,
  SELF_REFLECTION: self_reflection,
  VISUAL_SELF_CHECK: visual_self_check,
}


def plan_order(ctx: Context) -> Steps:
  """The module order and how it was chosen ("expert" or "default", with the reason). The
  paper's planner (planner.mode "paper") sees image + question only, so its one call serves
  every N; the adaptive one also sees the N samples' answers; "off" (the release's pipeline)
  makes no call and runs DEFAULT_ORDER."""
  if ctx.cfg.planner.mode == "off":
    return list(DEFAULT_ORDER), {"by": "default", "reason": "planner off"}
  if ctx.expert is None:
    return list(DEFAULT_ORDER), {"by": "default", "reason": "no expert"}
  paper = ctx.cfg.planner.mode == "paper"
  summary = "" if paper else candidate_summary(ctx.answers(), ctx.confidences())
  e = ctx.cfg.expert
  try:
    order = yield from ctx.ask(
      ("planner", summary),
      plan_ask(
        ctx.problem.question, ctx.problem.images, summary,
        max_tokens=e.planner_max_tokens, temperature=e.temperature, order_all=paper,
        style=ctx.cfg.prompts,
      ),
    )  # fmt: skip
  except ExpertError as err:
    return list(DEFAULT_ORDER), {"by": "default", "reason": f"planner failed: {err.record.error}"}
  last = ctx.calls[-1]
  if last.get("fallback"):
    return list(order), {"by": "default", "reason": last.get("reason")}
  return list(order), {"by": "expert"}


def run_catts(ctx: Context, modules: Sequence[str] | None = None) -> Steps:
  """CA-TTS on one problem at one N: its answer, correctness, confidence (the winner's share
  of the final vote), the plan, each module's record and the final table. `modules`: run
  these in this order instead of asking the Planner (the module-by-module ablations)."""
  if modules is None:
    order, how = yield from plan_order(ctx)
  else:
    order, how = list(modules), {"by": "ablation"}
  table = voting.VoteTable()
  modules = []
  for m in order:
    modules.append((yield from MODULES[m](ctx, table)))
  if table.winner() is None and SELF_CONSISTENCY not in order:
    record = yield from self_consistency(ctx, table)
    modules.append({**record, "reason": "the plan left no answer"})
  winner = table.winner()
  return {
    "answer": winner or "",
    "correct": ctx.correct(winner),
    "confidence": table.posterior().get(winner, 0.0) if winner else 0.0,
    "order": order,
    "plan": how,
    "modules": modules,
    "table": table.to_json(),
  }


def _decision(table: voting.VoteTable, ctx: Context) -> dict[str, Any]:
  winner = table.winner()
  share = table.posterior().get(winner, 0.0) if winner else 0.0
  return {"answer": winner or "", "correct": ctx.correct(winner), "confidence": share}


def voter_alone(ctx: Context) -> Steps:
  """The Expert's own pick among the N samples' answers: the candidate it gives the highest
  probability (first on ties); no answer when it gives none or its call fails."""
  candidates = list(voting.confidence_weighted(ctx.answers(), ctx.confidences()).weights())
  if ctx.expert is None or not candidates:
    return {"answer": "", "correct": False, "confidence": 0.0}
  try:
    probs = yield from expert_votes(ctx, candidates)
  except ExpertError as err:
    return {"answer": "", "correct": False, "confidence": 0.0, "reason": f"voter failed: {err.record.error}"}
  best = max(candidates, key=lambda a: probs.get(a, 0.0))
  p = probs.get(best, 0.0)
  best = best if p > 0 else ""
  return {"answer": best, "correct": ctx.correct(best), "confidence": p}


def run_method(method: str, ctx: Context) -> Steps:
  """One sampled method at one N (a generator when it may ask the Expert or the policy)."""
  if method == "catts":
    return (yield from run_catts(ctx))
  if method == "sc":
    return _decision(voting.confidence_weighted(ctx.answers(), ctx.confidences()), ctx)
  if method in ABLATIONS:
    return (yield from run_catts(ctx, ABLATIONS[method]))
  if method == "voter-alone":
    return (yield from voter_alone(ctx))
  return baseline(method, ctx)


def baseline(method: str, ctx: Context) -> dict[str, Any]:
  """A sampled baseline at N; confidence = the winner's vote share (best-of-N: the chosen
  sample's confidence)."""
  tts, n, answers = ctx.tts, ctx.n, ctx.answers()
  if method == "majority":
    return _decision(voting.majority(answers), ctx)
  if method == "deepconf":
    conf = ctx.drawn.score(tts.deepconf_confidence, n)
    return _decision(deepconf.deepconf_vote(answers, conf, tts.deepconf_keep), ctx)
  if method == "deepconf-online":
    r = deepconf.simulate_online(
      ctx.drawn.token_conf[:n], ctx.drawn.lengths[:n], answers,
      warmup=tts.deepconf_warmup, keep_fraction=tts.deepconf_keep, window=tts.deepconf_window,
    )  # fmt: skip
    return {
      **_decision(r.table, ctx),
      "threshold": r.threshold,
      "kept": int(r.kept.sum()),
      "tokens": int(r.tokens.sum()),
      "token_savings": r.token_savings,
    }
  if method == "best-of-n":
    answered = [s for s in ctx.drawn.samples[:n] if voting.answered(s.answer)]
    if not answered:
      return {"answer": "", "correct": False, "confidence": 0.0}
    best = max(answered, key=lambda s: s.confidence)
    return {"answer": best.answer, "correct": ctx.correct(best.answer), "confidence": _probability(best)}
  raise ValueError(f"unknown sampled method {method!r}; known: {SAMPLED}")


def _probability(response: Response) -> float:
  """A response's confidence as a probability for ECE and AUROC: exp(-NMLP), whatever the vote
  weighs by (the release's top-20 confidence runs ~5-20)."""
  return response.scores["confidence"]


def _single(response: Response) -> dict[str, Any]:
  return {"answer": response.answer, "correct": response.correct, "confidence": _probability(response)}


def solve(
  problem: Problem,
  drawn: Drawn | None,
  greedy: Response | None,
  vcd: Response | None,
  *,
  ns: Sequence[int],
  methods: Sequence[str],
  cfg,
  expert: Expert | None,
) -> Steps:
  """The results.jsonl row of one problem: its samples, every method at every N, and every
  expert call. A generator of the Expert calls, re-answers and self-check scores it needs
  (engine.py answers them)."""
  start = time.monotonic()
  tts = voting.TTSConfig(**cfg.tts)
  memo, calls = Memo(), []
  for r in [*(drawn.samples if drawn else []), greedy, vcd]:
    if r is not None:
      memo.judge(r)
  out: dict[str, Any] = {m: {} for m in methods if m in SAMPLED}
  for n in ns if drawn is not None else ():
    for method in out:
      ctx = Context(problem, drawn, n, expert, cfg, tts, memo, calls, vcd)
      out[method][str(n)] = yield from run_method(method, ctx)
  if "greedy" in methods:
    out["greedy"] = _single(greedy)
  if "vcd" in methods:
    out["vcd"] = _single(vcd)
  return {
    "id": problem.id,
    "index": problem.index,
    "gold": problem.example.get("answer"),
    "samples": [s.to_json() for s in drawn.samples] if drawn else [],
    "greedy": greedy.to_json() if greedy else None,
    "vcd": vcd.to_json() if vcd else None,
    "methods": out,
    "expert_calls": calls,
    "timing": {"solve_s": time.monotonic() - start},  # with the waits for other problems
  }
