"""One CDRL rollout: problems -> G samples each -> confidences under a perturbed image ->
rewards -> advantages -> a train batch for `Learner.step`.

Per problem: the original images and a perturbed copy (CLIP-targeted or whole-image, per
config); G samples on the original (the sampler also records their log-probs and
conf(y|x)); one batched scoring pass of the same responses under the perturbed images gives
conf(y|x_noisy); a scoring pass with the frozen reference gives the KL baseline. Groups whose
rewards have zero variance carry no GRPO signal and are dropped (DAPO dynamic filtering) when
`dynamic_filter` is on; the caller refills the batch from further problems.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from catts_jax import perturb
from catts_jax.policy import Policy
from catts_jax.rl import grpo, rewards
from catts_jax.sampling import SamplingConfig


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  group_size: int = 8
  max_new_tokens: int = 512
  temperature: float = 1.0
  top_p: float = 1.0
  perturbation: str = "noise"
  strength: float = 0.5
  targeted: bool = False
  regions: int = 4
  reward_weights: Mapping[str, float] = dataclasses.field(
    default_factory=lambda: {"accuracy": 1.0, "sensitivity": 0.5, "calibration": 0.5}
  )
  calibration_form: str = "signed"
  advantage: str = "grpo"
  dynamic_filter: bool = True
  template: str | None = None


def _right_align(values: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
  """Rows of sampler outputs (response at the start) -> scoring layout (response at the end)."""
  out = np.zeros((len(values), width), np.float32)
  for i, (row, n) in enumerate(zip(values, lengths)):
    out[i, width - n :] = row[:n]
  return out


def rollout(
  policy: Policy,
  examples: Sequence[dict],
  benchmark: str | None,
  cfg: RolloutConfig,
  key: jax.Array,
  *,
  state: nnx.State | None = None,
  ref_state: nnx.State | None = None,
  saliency=None,
  seed: int = 0,
) -> tuple[dict[str, np.ndarray] | None, int, dict[str, Any]]:
  """(train batch or None if every group was filtered, its response_len, metrics)."""
  prompts, originals, perturbed = [], [], []
  for i, ex in enumerate(examples):
    prompt, images = policy.example_prompt(ex, cfg.template)
    masks = (
      [saliency.region_mask(im, cfg.regions, ex["question"]) for im in images]
      if cfg.targeted
      else [None] * len(images)
    )
    noisy = [
      perturb.perturb(im, cfg.perturbation, cfg.strength, seed=seed + 1009 * i + j, regions=m)
      for j, (im, m) in enumerate(zip(images, masks))
    ]
    prompts.append(prompt)
    originals.append(images)
    perturbed.append(noisy)

  g = cfg.group_size
  sampling = SamplingConfig(
    max_new_tokens=cfg.max_new_tokens,
    n=g,
    temperature=cfg.temperature,
    top_p=cfg.top_p,
    stop_ids=policy.stop_ids(),
    confidence=policy.confidence,
  )
  out = policy.sampler(policy.processor(prompts, originals), sampling, key, state=state)
  lengths = out.lengths.reshape(-1)
  tokens = [t[:n] for t, n in zip(out.tokens.reshape(len(prompts) * g, -1), lengths)]
  texts = [policy.processor.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
  rep = lambda xs: [x for x in xs for _ in range(g)]  # noqa: E731

  noisy_scores = policy.scorer(
    policy.processor.scoring_batch(rep(prompts), tokens, rep(perturbed)), state=state
  )
  sb = policy.processor.scoring_batch(rep(prompts), tokens, rep(originals))
  confidence = out.scores["confidence"].reshape(-1)
  total, parts = rewards.compute(
    cfg.reward_weights,
    rep(prompts),
    texts,
    examples=rep(list(examples)),
    benchmark=benchmark,
    confidence=confidence,
    confidence_perturbed=noisy_scores["confidence"],
    form=cfg.calibration_form,
  )
  grouped = total.reshape(len(prompts), g).astype(np.float64)
  # Every estimator is shift-invariant: centring in float64 first keeps float32 from
  # subtracting nearly equal rewards (GRPO's division by a tiny std amplifies that error).
  centred = grouped - grouped.mean(-1, keepdims=True)
  advantages = np.asarray(grpo.advantages(cfg.advantage, centred)).reshape(-1)
  keep = np.repeat(grouped.std(-1) > 0, g) if cfg.dynamic_filter else np.ones(len(total), bool)

  metrics = {
    "reward": float(total.mean()),
    **{f"reward_{k}": float(v.mean()) for k, v in parts.items()},
    "confidence": float(confidence.mean()),
    "confidence_perturbed": float(noisy_scores["confidence"].mean()),
    "response_tokens": float(lengths.mean()),
    "kept_groups": int(keep.sum() // g),
    "groups": len(prompts),
  }
  if not keep.any():
    return None, sb.response_len, metrics

  # Rows past the real ones only pad the batch to its bucket: zero mask, zero advantage.
  rows, r = sb.batch.input_ids.shape[0], sb.response_len
  pad = rows - len(tokens)
  keep = np.concatenate([keep, np.zeros(pad, bool)])
  batch = dict(sb.batch.model_inputs())
  batch.update(
    old_logp=_pad_rows(_right_align(out.logprobs.reshape(len(tokens), -1), lengths, r), rows),
    response_mask=sb.response_mask.astype(np.float32) * keep[:, None],
    advantages=np.concatenate([advantages, np.zeros(pad)]).astype(np.float32) * keep,
  )
  if ref_state is not None:
    batch["ref_logp"] = _pad_rows(policy.scorer(sb, state=ref_state)["token_logprobs"], rows)
  return batch, r, metrics


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)]).astype(np.float32)
