"""Greedy answers of a policy on benchmark examples, graded, with the confidence of each answer
on its original image and (teacher-forced, the same answer) on a perturbed copy: the
before/after numbers of training runs.

  rows = greedy_eval(policy, examples, "synthetic", state=params, perturbation=("noise", 1.0))
  summary(rows)  # accuracy, confidence, confidence_perturbed, confidence_drop
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from catts_jax import perturb
from catts_jax.eval import answers
from catts_jax.policy import Policy
from catts_jax.sampling import SamplingConfig


def greedy_eval(
  policy: Policy,
  examples: Sequence[dict],
  benchmark: str | None,
  *,
  state=None,
  batch_size: int = 16,
  max_new_tokens: int = 64,
  perturbation: tuple[str, float] | None = None,
  template: str | None = None,
  seed: int = 0,
) -> list[dict[str, Any]]:
  """One row per example: id, response, answer, correct, confidence (exp(-NMLP)) and, with a
  perturbation, confidence_perturbed of the same response under the perturbed images."""
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_ids=policy.stop_ids())
  rows = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start : start + batch_size]
    prompts, images = zip(*(policy.example_prompt(ex, template) for ex in chunk))
    out = policy.sampler(policy.processor(prompts, images), sampling, jax.random.key(seed), state=state)
    tokens = [row[0] for row in out.token_lists()]
    texts = [policy.processor.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    perturbed = None
    if perturbation is not None:
      kind, strength = perturbation
      noisy = [
        [perturb.perturb(im, kind, strength, seed=seed + start + i) for im in ims]
        for i, ims in enumerate(images)
      ]
      scorable = [i for i, t in enumerate(tokens) if t]
      perturbed = np.full(len(chunk), np.nan)
      if scorable:
        batch = policy.processor.scoring_batch(
          [prompts[i] for i in scorable], [tokens[i] for i in scorable], [noisy[i] for i in scorable]
        )
        perturbed[scorable] = policy.scorer(batch, state=state)["confidence"][: len(scorable)]
    for i, (ex, text) in enumerate(zip(chunk, texts)):
      correct, answer = answers.grade(benchmark, text, ex)
      row = dict(
        id=ex["id"],
        response=text,
        answer=answer,
        correct=bool(correct),
        confidence=float(out.scores["confidence"][i, 0]),
      )
      if perturbed is not None:
        row["confidence_perturbed"] = float(perturbed[i])
      rows.append(row)
  return rows


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
  """Means over rows: accuracy, confidence and, when present, confidence_perturbed and the
  drop (original - perturbed)."""
  out = {
    "n": len(rows),
    "accuracy": float(np.mean([r["correct"] for r in rows])),
    "confidence": float(np.mean([r["confidence"] for r in rows])),
  }
  if rows and "confidence_perturbed" in rows[0]:
    out["confidence_perturbed"] = float(np.nanmean([r["confidence_perturbed"] for r in rows]))
    out["confidence_drop"] = out["confidence"] - out["confidence_perturbed"]
  return out
