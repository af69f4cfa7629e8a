"""What CA-TTS asks of the policy, in one place: prompts, N samples per problem, greedy and VCD
decodes, re-answers after a critique and self-check scores (many problems' in one call), each graded on the benchmark.

  ops = PolicyOps(policy, "mathvision", cfg)   # cfg: configs/catts.py
  problems = [ops.prepare(i, example) for i, example in enumerate(examples)]
  drawn = ops.draw(problems, n=16, seed=0)     # one Drawn per problem
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from catts_jax import data
from catts_jax.eval import answers as grading
from catts_jax.sampling import SamplingConfig
from catts_jax.tts.context import SCORE_KEYS, Drawn, Problem, Reanswer, Response, SelfcheckScores, stable_seed
from catts_jax.tts.reflection import reanswer_prompt
from catts_jax.tts.selfcheck import perturbed_images, score_pairs


class PolicyOps:
  """Everything CA-TTS asks of the policy: prompts, samples, greedy / VCD decodes, re-answers
  and self-check scores. Tests swap in a scripted stand-in."""

  def __init__(self, policy, benchmark: str, cfg, draws: dict | None = None):
    """`draws`: a cache of draws that runs on this policy share (the same problems, sampling
    settings, N and seed give the same samples: a second run reads them back)."""
    self.policy, self.benchmark, self.cfg, self.draws = policy, benchmark, cfg, draws
    s = cfg.sampling
    base = SamplingConfig(
      max_new_tokens=s.max_new_tokens,
      stop_ids=policy.stop_ids(),
      vcd_alpha=cfg.vcd.alpha,
      vcd_beta=cfg.vcd.beta,
      confidence=policy.confidence,
      compact_every=cfg.compact_every,
      grow_cache=cfg.grow_cache,
      share_prompt=cfg.share_prompt,
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
    """n samples of each problem, seeded by `seed` and its id (not by its batch)."""
    key = (self.benchmark, tuple((p.id, p.prompt) for p in problems), n, seed, self.sampling)
    if self.draws is not None and key in self.draws:
      return copy.deepcopy(self.draws[key])
    seeds = [stable_seed(seed, p.id) for p in problems]
    out = self.policy.sample(
      [p.prompt for p in problems], [p.images for p in problems], seeds=seeds, config=self.sampling, n=n
    )
    rows = self._responses(problems, out, lambda j: f"sample {j}")
    drawn = [
      Drawn(row, np.asarray(out.scores["token_conf"][b], np.float64), np.asarray(out.lengths[b]))
      for b, row in enumerate(rows)
    ]
    if self.draws is not None:
      self.draws[key] = copy.deepcopy(drawn)
    return drawn

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

  def reanswer_all(self, requests: Sequence[Reanswer]) -> list[Response]:
    """Every re-answer in one decode, each seeded on its own (batch-independent)."""
    prompts = [
      reanswer_prompt(
        self.policy.processor,
        r.problem.example,
        r.target.text,
        r.critique,
        self.cfg.template,
        answer=r.target.answer,
        style=self.cfg.prompts,
      )  # fmt: skip
      for r in requests
    ]
    out = self.policy.sample(
      prompts, [r.problem.images for r in requests], seeds=[r.seed for r in requests], config=self.reflection
    )
    rows = self._responses([r.problem for r in requests], out, lambda j: "reflection")
    return [row[0] for row in rows]

  def selfcheck_all(self, requests: Sequence[SelfcheckScores]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every request's responses under the original and the perturbed images, in one pass."""
    s = self.cfg.selfcheck
    noisy = [
      perturbed_images(
        r.problem.images, s.perturbation, s.strength, stable_seed(self.cfg.seed, r.problem.id, "selfcheck")
      )
      for r in requests
    ]
    return score_pairs(self.policy, [(r.problem, z, r.responses) for r, z in zip(requests, noisy)])
