"""CA-TTS on a benchmark: N samples per problem drawn once, every method and every N judged on
them, one row per problem streamed to results.jsonl.

  ops = PolicyOps(policy, "mathvision", cfg)             # cfg: configs/catts.py
  runner = Runner(ops, examples, ns=(1, 2, 4), methods=METHODS, expert=expert, cfg=cfg)
  rows = runner.run(pathlib.Path("runs/catts"))          # a rerun skips finished problems

Per problem the largest N is sampled once (several problems per sampler call); N < max uses
the first N samples, so methods and N compare on the same samples. At each N:
- CA-TTS: the Expert as Planner picks the module order (no expert, a failed call or an
  unparseable plan: SC -> SR -> SCk); the modules write into one VoteTable:
  Self-Consistency (confidence-weighted votes, then the Expert as Voter adds tau * N),
  Self-Reflection (reflection.py) and Visual Self-Check (selfcheck.py). A plan that skips SC
  and leaves the table without an answer gets the SC votes after all (recorded).
- Baselines: majority vote, DeepConf offline and online (replayed, deepconf.py), best-of-N
  by confidence. Greedy and VCD decoding are one decode each, independent of N.
Expert calls repeat at every N, but an identical request (same role, same candidates or
response) is answered from the problem's memo, and so are re-answers and self-check scores:
the expert is deterministic at temperature 0. Every call is recorded (role, n, ok, latency,
attempts, error, cached). An expert failure costs that module its vote, never the problem;
any other exception fails the problem, recorded with its error on its row, and the run goes on.

Resume: rows are keyed by problem id. Problems are drawn in fixed chunks of `batch_size` by
position, seeded by the chunk's ids, and a chunk with any unfinished problem is drawn again
whole, so a killed and resumed run writes the same rows as an uninterrupted one (latencies and
timings aside).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from catts_jax import data
from catts_jax.eval import answers as grading
from catts_jax.eval.report import read_rows, trim_partial_line
from catts_jax.sampling import SamplingConfig
from catts_jax.tts import deepconf, voting
from catts_jax.tts.expert import Expert, ExpertError, vote
from catts_jax.tts.planner import (
  DEFAULT_ORDER,
  SELF_CONSISTENCY,
  SELF_REFLECTION,
  VISUAL_SELF_CHECK,
  candidate_summary,
  plan,
)
from catts_jax.tts.reflection import reanswer_prompt, self_reflection
from catts_jax.tts.selfcheck import perturbed_images, score_pairs, visual_self_check

METHODS = ("catts", "majority", "deepconf", "deepconf-online", "best-of-n", "greedy", "vcd")
SAMPLED = ("catts", "majority", "deepconf", "deepconf-online", "best-of-n")  # use the N samples
SCORE_KEYS = ("confidence", "nmlp", "conf_mean", "conf_tail", "conf_bottom", "conf_min_window")


def stable_seed(*parts: Any) -> int:
  """A seed from JSON-able parts, the same in every process (unlike `hash`)."""
  digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# --- what one problem holds ---------------------------------------------------------------


@dataclasses.dataclass
class Problem:
  index: int  # position in the benchmark list
  example: dict
  prompt: str  # the policy's rendered chat prompt
  images: list  # RGB images in prompt order
  question: str  # the user-turn text, as the Expert reads it

  @property
  def id(self) -> str:
    return str(self.example["id"])


@dataclasses.dataclass
class Response:
  """One graded response of the policy. `confidence` is the vote weight (`tts.sc_confidence`
  of `scores`)."""

  source: str  # "sample 3", "greedy", "vcd", "reflection"
  text: str
  tokens: list[int]
  answer: str  # canonical extracted answer, "" when none was found
  correct: bool
  confidence: float
  scores: dict[str, float] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return {
      "source": self.source,
      "response": self.text,
      "answer": self.answer,
      "correct": self.correct,
      "tokens": len(self.tokens),
      **self.scores,
    }


@dataclasses.dataclass
class Drawn:
  """The largest-N samples of one problem, in draw order."""

  samples: list[Response]
  token_conf: np.ndarray  # [n, L] DeepConf token confidence, 0 past each length
  lengths: np.ndarray  # [n]

  def score(self, key: str, n: int) -> np.ndarray:
    return np.array([s.scores[key] for s in self.samples[:n]], np.float64)


# --- the policy's side ------------------------------------------------------------------------


class PolicyOps:
  """Everything CA-TTS asks of the policy: prompts, samples, greedy / VCD decodes, re-answers
  and self-check scores. Tests swap in a scripted stand-in."""

  def __init__(self, policy, benchmark: str, cfg):
    self.policy, self.benchmark, self.cfg = policy, benchmark, cfg
    s = cfg.sampling
    base = SamplingConfig(
      max_new_tokens=s.max_new_tokens,
      stop_ids=policy.stop_ids(),
      vcd_alpha=cfg.vcd.alpha,
      vcd_beta=cfg.vcd.beta,
      confidence=policy.confidence,
    )
    self.sampling = dataclasses.replace(base, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
    self.greedy = dataclasses.replace(base, temperature=0.0)
    self.reflection = dataclasses.replace(
      self.sampling, temperature=cfg.reflection.temperature, max_new_tokens=cfg.reflection.max_new_tokens
    )
    self.sc_confidence = cfg.tts.sc_confidence

  def prepare(self, index: int, example: dict) -> Problem:
    prompt, images = self.policy.example_prompt(example, self.cfg.template)
    return Problem(index, example, prompt, images, data.prompt_for(example, self.cfg.template))

  def grade(self, problem: Problem, text: str) -> tuple[bool, str]:
    correct, answer = grading.grade(self.benchmark, text, problem.example)
    return bool(correct), answer

  def _responses(
    self, problems: Sequence[Problem], out, source: Callable[[int], str]
  ) -> list[list[Response]]:
    tokens = out.token_lists()
    rows = []
    for b, problem in enumerate(problems):
      row = []
      for j, text in enumerate(out.texts[b]):
        scores = {k: float(out.scores[k][b, j]) for k in SCORE_KEYS}
        correct, answer = self.grade(problem, text)
        row.append(
          Response(source(j), text, tokens[b][j], answer, correct, scores[self.sc_confidence], scores)
        )
      rows.append(row)
    return rows

  def draw(self, problems: Sequence[Problem], n: int, seed: int) -> list[Drawn]:
    out = self.policy.sample(
      [p.prompt for p in problems], [p.images for p in problems], seed=seed, config=self.sampling, n=n
    )
    rows = self._responses(problems, out, lambda j: f"sample {j}")
    return [
      Drawn(row, np.asarray(out.scores["token_conf"][b], np.float64), np.asarray(out.lengths[b]))
      for b, row in enumerate(rows)
    ]

  def vcd_images(self, problem: Problem) -> list:
    v = self.cfg.vcd
    return perturbed_images(
      problem.images, v.perturbation, v.strength, stable_seed(self.cfg.seed, problem.id, "vcd")
    )

  def decode(self, problems: Sequence[Problem], vcd: bool = False) -> list[Response]:
    """One greedy decode per problem; with `vcd`, contrastive against `vcd_images`."""
    contrast = [self.vcd_images(p) for p in problems] if vcd else None
    out = self.policy.sample(
      [p.prompt for p in problems], [p.images for p in problems], contrast_images=contrast, config=self.greedy
    )
    name = "vcd" if vcd else "greedy"
    return [row[0] for row in self._responses(problems, out, lambda j: name)]

  def reanswer(self, problem: Problem, target: Response, critique_text: str, seed: int) -> Response:
    prompt = reanswer_prompt(
      self.policy.processor, problem.example, target.text, critique_text, self.cfg.template
    )
    out = self.policy.sample([prompt], [problem.images], seed=seed, config=self.reflection)
    return self._responses([problem], out, lambda j: "reflection")[0][0]

  def selfcheck_scores(
    self, problem: Problem, responses: Sequence[Sequence[int]]
  ) -> tuple[np.ndarray, np.ndarray]:
    s = self.cfg.selfcheck
    noisy = perturbed_images(
      problem.images, s.perturbation, s.strength, stable_seed(self.cfg.seed, problem.id, "selfcheck")
    )
    return score_pairs(self.policy, problem.prompt, problem.images, noisy, responses)


# --- one problem at one N -------------------------------------------------------------------


@dataclasses.dataclass
class Memo:
  """What one problem's CA-TTS runs share across N."""

  expert: dict = dataclasses.field(default_factory=dict)  # request key -> (result, call) or ExpertError
  reanswers: dict = dataclasses.field(default_factory=dict)  # (tokens, critique) -> Response
  selfcheck: dict = dataclasses.field(default_factory=dict)  # tokens -> (conf_orig, conf_noisy)
  verdicts: dict = dataclasses.field(default_factory=dict)  # answer -> correct

  def judge(self, response: Response) -> None:
    """An answer is judged by the first response that gave it (equal canonical answers grade
    alike; this keeps one verdict per answer in the rare case they do not)."""
    if voting.answered(response.answer):
      self.verdicts.setdefault(response.answer, response.correct)


@dataclasses.dataclass
class Context:
  """One problem at one N: the samples' prefix, the modules' extra responses (the pool), and
  the expert calls made so far (shared by all N of the problem)."""

  problem: Problem
  drawn: Drawn
  n: int
  expert: Expert | None
  ops: PolicyOps
  cfg: Any
  tts: voting.TTSConfig
  memo: Memo
  calls: list[dict]
  vcd: Response | None = None  # the VCD decode, for the self-check's optional vote
  pool: list[Response] = dataclasses.field(init=False)

  def __post_init__(self):
    self.pool = list(self.drawn.samples[: self.n])

  def answers(self) -> list[str]:
    return [s.answer for s in self.drawn.samples[: self.n]]

  def confidences(self) -> np.ndarray:
    return np.array([s.confidence for s in self.drawn.samples[: self.n]], np.float64)

  def correct(self, answer: str | None) -> bool:
    return bool(answer) and self.memo.verdicts.get(answer, False)

  def representative(self, answer: str | None) -> Response:
    """The most confident response in the pool that gave `answer` (None: of all); the
    first on ties."""
    candidates = [r for r in self.pool if answer is None or r.answer == answer]
    return max(candidates, key=lambda r: r.confidence)

  def ask(self, key: tuple, call: Callable[[], tuple[Any, Any]]) -> Any:
    """An expert result, from the memo when the same request was made at an earlier N.
    Failed calls raise ExpertError; an unusable reply (the call worked, its output did not
    parse) is remembered too, transport failures are not (the next N tries again)."""
    if key in self.memo.expert:
      found = self.memo.expert[key]
      record = (found.record if isinstance(found, ExpertError) else found[1]).to_dict()
      self.calls.append({**record, "latency_s": 0.0, "attempts": 0, "n": self.n, "cached": True})
      if isinstance(found, ExpertError):
        raise found
      return found[0]
    try:
      result, record = call()
    except ExpertError as e:
      self.calls.append({**e.record.to_dict(), "n": self.n, "cached": False})
      if e.record.output is not None:
        self.memo.expert[key] = e
      raise
    self.memo.expert[key] = (result, record)
    self.calls.append({**record.to_dict(), "n": self.n, "cached": False})
    return result

  def reanswer(self, target: Response, critique_text: str) -> Response:
    key = (tuple(target.tokens), critique_text)
    if key not in self.memo.reanswers:
      seed = stable_seed(self.cfg.seed, self.problem.id, "reanswer", target.source, critique_text)
      new = self.ops.reanswer(self.problem, target, critique_text, seed)
      self.memo.judge(new)
      self.memo.reanswers[key] = new
    new = self.memo.reanswers[key]
    self.pool.append(new)
    return new

  def selfcheck_scores(self, responses: Sequence[Response]) -> tuple[np.ndarray, np.ndarray]:
    """(conf_orig, conf_noisy) per response; new ones scored in one pass, empty ones 0."""
    todo = list(dict.fromkeys(tuple(r.tokens) for r in responses if r.tokens))
    todo = [t for t in todo if t not in self.memo.selfcheck]
    if todo:
      orig, noisy = self.ops.selfcheck_scores(self.problem, [list(t) for t in todo])
      self.memo.selfcheck.update({t: (float(o), float(z)) for t, o, z in zip(todo, orig, noisy)})
    pairs = [self.memo.selfcheck.get(tuple(r.tokens), (0.0, 0.0)) for r in responses]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def self_consistency(ctx: Context, table: voting.VoteTable) -> dict[str, Any]:
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
  e = ctx.cfg.expert
  try:
    probs = ctx.ask(
      ("voter", tuple(candidates)),
      lambda: vote(
        ctx.expert, ctx.problem.question, ctx.problem.images, candidates,
        max_tokens=e.voter_max_tokens, temperature=e.temperature,
      ),
    )  # fmt: skip
  except ExpertError as err:
    record["voter"] = {"ran": False, "reason": f"voter failed: {err.record.error}"}
    return record
  added = voting.voter_boost(table, probs, ctx.n, ctx.tts.tau)
  record["voter"] = {"ran": True, "probs": probs, "added": added}
  return record


MODULES = {
  SELF_CONSISTENCY: self_consistency,
  SELF_REFLECTION: self_reflection,
  VISUAL_SELF_CHECK: visual_self_check,
}


def plan_order(ctx: Context) -> tuple[list[str], dict[str, Any]]:
  """The module order and how it was chosen ("expert" or "default", with the reason)."""
  if ctx.expert is None:
    return list(DEFAULT_ORDER), {"by": "default", "reason": "no expert"}
  summary = candidate_summary(ctx.answers(), ctx.confidences())
  e = ctx.cfg.expert
  try:
    order = ctx.ask(
      ("planner", summary),
      lambda: plan(
        ctx.expert, ctx.problem.question, ctx.problem.images, summary,
        max_tokens=e.planner_max_tokens, temperature=e.temperature,
      ),
    )  # fmt: skip
  except ExpertError as err:
    return list(DEFAULT_ORDER), {"by": "default", "reason": f"planner failed: {err.record.error}"}
  last = ctx.calls[-1]
  if last.get("fallback"):
    return list(order), {"by": "default", "reason": last.get("reason")}
  return list(order), {"by": "expert"}


def run_catts(ctx: Context) -> dict[str, Any]:
  """CA-TTS on one problem at one N: its answer, correctness, confidence (the winner's share
  of the final vote), the plan, each module's record and the final table."""
  order, how = plan_order(ctx)
  table = voting.VoteTable()
  modules = [MODULES[m](ctx, table) for m in order]
  if table.winner() is None and SELF_CONSISTENCY not in order:
    record = self_consistency(ctx, table)
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


# --- baselines --------------------------------------------------------------------------------


def _decision(table: voting.VoteTable, ctx: Context) -> dict[str, Any]:
  winner = table.winner()
  share = table.posterior().get(winner, 0.0) if winner else 0.0
  return {"answer": winner or "", "correct": ctx.correct(winner), "confidence": share}


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
    return {"answer": best.answer, "correct": ctx.correct(best.answer), "confidence": best.confidence}
  raise ValueError(f"unknown sampled method {method!r}; known: {SAMPLED}")


def _single(response: Response) -> dict[str, Any]:
  return {"answer": response.answer, "correct": response.correct, "confidence": response.confidence}


def solve(
  problem: Problem,
  drawn: Drawn | None,
  greedy: Response | None,
  vcd: Response | None,
  *,
  ns: Sequence[int],
  methods: Sequence[str],
  expert: Expert | None,
  ops: PolicyOps,
  cfg,
) -> dict[str, Any]:
  """The results.jsonl row of one problem: its samples, every method at every N, and every
  expert call."""
  start = time.monotonic()
  tts = voting.TTSConfig(**cfg.tts)
  memo, calls = Memo(), []
  for r in [*(drawn.samples if drawn else []), greedy, vcd]:
    if r is not None:
      memo.judge(r)
  out: dict[str, Any] = {m: {} for m in methods if m in SAMPLED}
  for n in ns if drawn is not None else ():
    for method in out:
      ctx = Context(problem, drawn, n, expert, ops, cfg, tts, memo, calls, vcd)
      out[method][str(n)] = run_catts(ctx) if method == "catts" else baseline(method, ctx)
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
    "timing": {"solve_s": time.monotonic() - start},
  }


# --- the run -------------------------------------------------------------------------------------


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
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.jsonl"
    trim_partial_line(path)
    done = {str(r["id"]) for r in read_rows(path)}
    if progress:
      progress(sum(str(ex.get("id")) in done for ex in self.examples))
    size = max(1, int(self.cfg.batch_size))
    indexed = list(enumerate(self.examples))
    with path.open("a", encoding="utf-8") as f:
      for start in range(0, len(indexed), size):
        chunk = indexed[start : start + size]
        pending = {i for i, ex in chunk if str(ex.get("id", i)) not in done}
        if not pending:
          continue
        for row in self._chunk(chunk, pending):
          f.write(json.dumps(row, ensure_ascii=False) + "\n")
          f.flush()
          done.add(str(row["id"]))
          if progress:
            progress(1)
    return read_rows(path)
