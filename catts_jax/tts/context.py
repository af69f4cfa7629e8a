"""What CA-TTS works on: one problem, its graded responses, its drawn samples, the Context the
modules (methods.py, reflection.py, selfcheck.py) read and write at one N, and the requests
they yield for what only the Expert or the policy can answer (engine.py answers them, many
problems' at a time).

  ctx = Context(problem, drawn, n, expert, cfg, tts, memo, calls)
  ctx.answers(), ctx.confidences()       # the first n samples'
  probs = yield from ctx.ask(("voter", cands), vote_ask(...))  # from the memo at a later N

Expert calls repeat at every N, but an identical request (same role, same candidates or
response) is answered from the problem's `Memo`, and so are re-answers and self-check scores:
the expert is deterministic at temperature 0. Every call is recorded in `calls` (role, n, ok,
latency, attempts, error, cached).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Generator, Sequence
from typing import Any, Protocol

import numpy as np

from catts_jax.tts import voting
from catts_jax.tts.expert import Ask, Expert, ExpertError

# The sampler's scores each Response carries (catts_jax.scoring / sampling names).
SCORE_KEYS = ("confidence", "nmlp", "conf_mean", "conf_tail", "conf_bottom", "conf_min_window")


def stable_seed(*parts: Any) -> int:
  """A seed from JSON-able parts, the same in every process (unlike `hash`)."""
  digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


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
  of `scores`, keyed by SCORE_KEYS)."""

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


@dataclasses.dataclass(frozen=True)
class ExpertRequest:
  """An Expert call; answered with (result, call record), or its ExpertError thrown in."""

  ask: Ask


@dataclasses.dataclass(frozen=True)
class Reanswer:
  """The policy answers `problem` again after `critique` of `target`; answered with a Response."""

  problem: Problem
  target: Response
  critique: str
  seed: int


@dataclasses.dataclass(frozen=True)
class SelfcheckScores:
  """exp(-NMLP) of each response (token ids) under the problem's image and a perturbed copy;
  answered with (conf_orig [K], conf_noisy [K])."""

  problem: Problem
  responses: list[list[int]]


Request = ExpertRequest | Reanswer | SelfcheckScores
# A module's work on one problem: a generator that yields Requests, is sent their answers and
# returns its result (drive it with engine.py).
Steps = Generator[Request, Any, Any]


class Ops(Protocol):
  """What a Context asks of the policy, many problems at a time (policy_ops.PolicyOps, or a
  test's scripted stand-in)."""

  def reanswer_all(self, requests: Sequence[Reanswer]) -> list[Response]: ...

  def selfcheck_all(self, requests: Sequence[SelfcheckScores]) -> list[tuple[np.ndarray, np.ndarray]]: ...


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

  def boost(self, fraction: float, voter: bool = False) -> float:
    """A module's whole boost: `fraction` of N, as the config sizes boosts (`voting.boost_total`)."""
    return voting.boost_total(fraction, self.answers(), self.confidences(), self.tts, voter=voter)

  def correct(self, answer: str | None) -> bool:
    return bool(answer) and self.memo.verdicts.get(answer, False)

  def representative(self, answer: str | None) -> Response:
    """The most confident response in the pool that gave `answer` (None: of all); the
    first on ties."""
    candidates = [r for r in self.pool if answer is None or r.answer == answer]
    return max(candidates, key=lambda r: r.confidence)

  def ask(self, key: tuple, ask: Ask) -> Steps:
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
      result, record = yield ExpertRequest(ask)
    except ExpertError as e:
      self.calls.append({**e.record.to_dict(), "n": self.n, "cached": False})
      if e.record.output is not None:
        self.memo.expert[key] = e
      raise
    self.memo.expert[key] = (result, record)
    self.calls.append({**record.to_dict(), "n": self.n, "cached": False})
    return result

  def reanswer(self, target: Response, critique_text: str) -> Steps:
    key = (tuple(target.tokens), critique_text)
    if key not in self.memo.reanswers:
      seed = stable_seed(self.cfg.seed, self.problem.id, "reanswer", target.source, critique_text)
      new = yield Reanswer(self.problem, target, critique_text, seed)
      self.memo.judge(new)
      self.memo.reanswers[key] = new
    new = self.memo.reanswers[key]
    self.pool.append(new)
    return new

  def selfcheck_scores(self, responses: Sequence[Response]) -> Steps:
    """(conf_orig, conf_noisy) per response; new ones scored in one pass, empty ones 0."""
    todo = list(dict.fromkeys(tuple(r.tokens) for r in responses if r.tokens))
    todo = [t for t in todo if t not in self.memo.selfcheck]
    if todo:
      orig, noisy = yield SelfcheckScores(self.problem, [list(t) for t in todo])
      self.memo.selfcheck.update({t: (float(o), float(z)) for t, o, z in zip(todo, orig, noisy)})
    pairs = [self.memo.selfcheck.get(tuple(r.tokens), (0.0, 0.0)) for r in responses]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
