"""Reward functions for CDRL, in a registry chosen by name and weighted in config.

Every reward is `fn(prompts, completions, **fields) -> np.ndarray [N]`, one value per
completion. Fields the rollout provides: `examples` (the problem of each completion),
`benchmark`, `correct` (graded once, by `accuracy`), `confidence` (conf(y|x)) and
`confidence_perturbed` (conf(y|x_noisy)) of the same response under the perturbed image.

The paper gives no formulas; ours (PAPER.md):
- accuracy: 1 if the extracted answer is correct, else 0 (the benchmark's own grader);
- format: 1 if the response holds exactly one non-empty `\\boxed{...}`;
- perceptual sensitivity: `clip(conf(y|x) - conf(y|x_noisy), 0, 1)`, a confidence drop when
  the image is degraded;
- calibration consistency: `conf` if correct else `-conf` ("signed", default), or the Brier
  form `1 - (conf - correct)^2`. A response that states no final answer (no non-empty
  \\boxed{} and no "the answer is ...") gets the worst value
  (-1, Brier 0): otherwise a policy can lower its confidence on wrong answers by writing
  improbable text instead of answering. On the toy colour task, CDRL from a chance-level start
  did exactly that (accuracy and confidence both 0 within 20 steps) until this rule. Text
  that states an answer can still be made improbable; `calibration_confidence` (the
  rollout's `calibration_span="answer"`) judges the answer's tokens alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

RewardFn = Callable[..., np.ndarray]
REWARDS: dict[str, RewardFn] = {}


def register(name: str):
  def wrap(fn: RewardFn) -> RewardFn:
    REWARDS[name] = fn
    return fn

  return wrap


def states_an_answer(response: str) -> bool:
  """A non-empty \\boxed{} or a non-empty "the answer is ..." span."""
  from catts_jax.eval import parsing

  return any(parsing.boxed(response)) or bool(parsing.after_phrase(response))


def grade(completions, examples, benchmark=None) -> tuple[np.ndarray, np.ndarray]:
  """(correct, answered) per completion: graded by the benchmark's grader; answered = the
  response states a final answer."""
  from catts_jax.eval import answers

  correct = [answers.grade(benchmark, c, ex)[0] for c, ex in zip(completions, examples)]
  answered = [states_an_answer(c) for c in completions]
  return np.asarray(correct, np.float32), np.asarray(answered, bool)


@register("accuracy")
def accuracy(prompts, completions, *, examples, benchmark=None, correct=None, **_) -> np.ndarray:
  if correct is not None:
    return np.asarray(correct, np.float32)
  return grade(completions, examples, benchmark)[0]


BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


@register("format")
def format_reward(prompts, completions, **_) -> np.ndarray:
  return np.asarray(
    [len(found := BOXED.findall(c)) == 1 and bool(found[0].strip()) for c in completions], np.float32
  )


@register("sensitivity")
def perceptual_sensitivity(prompts, completions, *, confidence, confidence_perturbed, **_) -> np.ndarray:
  drop = np.asarray(confidence, np.float32) - np.asarray(confidence_perturbed, np.float32)
  return np.clip(drop, 0.0, 1.0)


@register("calibration")
def calibration(
  prompts,
  completions,
  *,
  confidence,
  correct,
  answered=None,
  form: str = "signed",
  calibration_confidence=None,
  **_,
) -> np.ndarray:
  """`calibration_confidence`: the confidence to calibrate, when not the response's own
  (the rollout's `calibration_span="answer"`: that of the final answer's tokens)."""
  conf = np.asarray(confidence if calibration_confidence is None else calibration_confidence, np.float32)
  value, _, worst = _calibration(conf, np.asarray(correct, np.float32), form)
  if answered is None:
    return value
  return np.where(np.asarray(answered, bool), value, worst).astype(np.float32)


def _calibration(conf: np.ndarray, right: np.ndarray, form: str):
  """(value, d value / d conf, the value of a response that states no answer)."""
  if form == "signed":
    return np.where(right > 0, conf, -conf), np.where(right > 0, 1.0, -1.0), -1.0
  if form == "brier":
    return 1.0 - (conf - right) ** 2, -2.0 * (conf - right), 0.0
  raise ValueError(f"unknown calibration form {form!r}; expected 'signed' or 'brier'")


def compute(
  weights: Mapping[str, float], prompts: Sequence[str], completions: Sequence[str], **fields
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Weighted sum of the named rewards and each component. Accuracy is graded first so the
  others (calibration) reuse `correct`."""
  unknown = set(weights) - set(REWARDS)
  if unknown:
    raise ValueError(f"unknown reward(s) {sorted(unknown)}; registered: {sorted(REWARDS)}")
  components = {}
  if "correct" not in fields and ("accuracy" in weights or "calibration" in weights):
    fields["correct"], fields["answered"] = grade(completions, fields["examples"], fields.get("benchmark"))
  for name in weights:
    components[name] = np.asarray(REWARDS[name](prompts, completions, **fields), np.float32)
  total = sum(weights[name] * components[name] for name in weights)
  return np.asarray(total, np.float32), components


def confidence_gradients(
  weights: Mapping[str, float],
  *,
  confidence,
  confidence_perturbed,
  correct,
  answered,
  form: str = "signed",
  calibration_confidence=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The weighted rewards' own dependence on the confidences, per completion: d total /
  d conf(y|x) through sensitivity, d total / d conf(y|x_noisy), and d total / d the
  confidence calibration judges (`calibration_confidence`, default conf(y|x); add it to the
  first when that is conf(y|x)). Accuracy and format do not depend on them. Zero where a
  reward is flat: sensitivity clipped at 0 or 1, calibration of a response that states no
  answer."""
  conf = np.asarray(confidence, np.float64)
  noisy = np.asarray(confidence_perturbed, np.float64)
  d_clean, d_noisy, d_calibrated = np.zeros_like(conf), np.zeros_like(conf), np.zeros_like(conf)
  w = weights.get("sensitivity", 0.0)
  if w:
    live = (conf - noisy > 0) & (conf - noisy < 1)
    d_clean += w * live
    d_noisy -= w * live
  w = weights.get("calibration", 0.0)
  if w:
    judged = conf if calibration_confidence is None else np.asarray(calibration_confidence, np.float64)
    _, slope, _ = _calibration(judged, np.asarray(correct, np.float64), form)
    d_calibrated += w * slope * np.asarray(answered, bool)
  return d_clean, d_noisy, d_calibrated
