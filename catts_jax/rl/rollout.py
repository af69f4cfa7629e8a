"""One CDRL rollout: problems -> G samples each -> confidences under a perturbed image ->
rewards -> advantages -> a train batch for `Learner.step`.

Per problem: the original images and a perturbed copy (CLIP-targeted or whole-image, per
config); G samples on the original (the sampler also records their log-probs and
conf(y|x)); one batched scoring pass of the same responses under the perturbed images gives
conf(y|x_noisy); a scoring pass with the frozen reference gives the KL baseline. Groups whose
rewards have zero variance carry no GRPO signal and are dropped (DAPO dynamic filtering) when
`dynamic_filter` is on; given more problems than `train_groups`, the informative groups
fill the batch first (DAPO's refill, sampled in one pass).

`confidence_gradient`: the sensitivity reward clip(conf(y|x) - conf(y|x_noisy), 0, 1) and the
calibration reward (+-conf(y|x), or Brier) are differentiable functions of the policy, but a
policy-gradient reward only ranks the sampled responses: nothing ever lowers conf(y|x_noisy)
itself. With this on, the rewards' own gradient joins the update
(`rewards.confidence_gradients`): the perturbed-image copy of each response joins the train
batch with advantage (d R / d conf_noisy) * conf(y|x_noisy) (old log-probs from the scoring
pass) and the sampled row's advantage gains (d R / d conf) * conf(y|x). At ratio 1 their
policy-loss gradients are the reward's gradient through each confidence (d conf = conf *
d mean log p), up to the loss's token aggregation. Sensitivity's pair moves only what tells
the two images apart (pushing conf(y|x_noisy) down alone also lowers conf(y|x) through the
shared weights, and on a model that cannot see yet, confidence everywhere); calibration's
term keeps sensitivity's push on conf(y|x) off wrong answers. The clipped ratio bounds how
far one step goes. `confidence_gradient_from` delays it to that train step: pushing conf(y|x_noisy)
down means nothing while the policy cannot see yet.

`calibration_span="answer"`: the calibration reward judges the confidence of the final
answer's tokens (`answer_mask`: the last \\boxed{}), exp(mean log-prob) from the sampler,
instead of the whole response's. Below 50% accuracy the calibration reward pays for low
confidence; on the whole response a policy can earn that by writing improbable text, and on
the toy colour task it did, and stopped exploring the right answer. With the gradient on,
calibration's term becomes a per-token advantage on the answer's tokens
(`token_advantages`), scaled by length / answer tokens so that a row's push is, as for the
row terms, its token count times the gradient of its confidence.
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
  confidence_gradient: bool = False
  confidence_gradient_from: int = 0  # the train step it starts at
  # The confidence the calibration reward judges: "response" (exp(-NMLP) of the whole
  # response) or "answer" (of the final \\boxed{} answer's tokens; see `answer_mask`).
  calibration_span: str = "response"
  template: str | None = None

  def __post_init__(self):
    # The learner's log-probs and the ratio's old_logp are the temperature-1, untruncated
    # policy's; samples drawn from a tempered or top-p policy would get a gradient that is
    # not the sampled policy's.
    if self.temperature != 1.0 or self.top_p != 1.0:
      raise ValueError(
        f"rollout temperature={self.temperature}, top_p={self.top_p}: the learner scores the "
        "temperature-1 policy, so rollouts must sample it (temperature=1.0, top_p=1.0)"
      )


def answer_mask(tokenizer, tokens: Sequence[int]) -> np.ndarray:
  """[L] bool: the tokens that spell the last \\boxed{} answer of a response (all tokens
  when it has none). Lowering the whole response's confidence can be done by writing
  improbable text anywhere; lowering the answer's only by doubting the answer."""
  pieces = tokenizer.batch_decode([[t] for t in tokens])
  sizes = np.array([len(p) for p in pieces], int)
  ends = np.cumsum(sizes)
  found = list(rewards.BOXED.finditer("".join(pieces)))
  if not found:
    return np.ones(len(tokens), bool)
  start, stop = found[-1].span(1)
  mask = (ends > start) & (ends - sizes < stop)  # the token's characters overlap the answer
  return mask if mask.any() else np.ones(len(tokens), bool)


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
  train_groups: int | None = None,
  step: int = 0,
  solutions: bool = False,
) -> tuple[dict[str, np.ndarray] | None, int, dict[str, Any]]:
  """(train batch or None if every group was filtered, its response_len, metrics).

  `train_groups`: how many of the sampled groups the batch holds (default: all); sample more
  problems than that for DAPO's refill of filtered groups. `step`: the train step, for
  `confidence_gradient_from`. `solutions`: each trained problem's reference solution on its
  original images joins the batch as a row marked by `sft_rows` (`LossConfig.sft_coef`)."""
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
  confidence = out.scores["confidence"].reshape(-1)
  correct, answered = rewards.grade(texts, rep(list(examples)), benchmark)
  token_logp = out.logprobs.reshape(len(tokens), -1)
  if cfg.calibration_span == "answer":
    spans = [answer_mask(policy.processor.tokenizer, t) for t in tokens]
    calibrated = np.array(
      [np.exp(token_logp[i, : len(m)][m].mean()) if len(m) else confidence[i] for i, m in enumerate(spans)]
    )
  elif cfg.calibration_span == "response":
    spans, calibrated = None, confidence
  else:
    raise ValueError(f"calibration_span {cfg.calibration_span!r}: expected 'response' or 'answer'")
  total, parts = rewards.compute(
    cfg.reward_weights,
    rep(prompts),
    texts,
    examples=rep(list(examples)),
    benchmark=benchmark,
    correct=correct,
    answered=answered,
    confidence=confidence,
    confidence_perturbed=noisy_scores["confidence"],
    calibration_confidence=calibrated,
    form=cfg.calibration_form,
  )
  grouped = total.reshape(len(prompts), g).astype(np.float64)
  # Every estimator is shift-invariant: centring in float64 first keeps float32 from
  # subtracting nearly equal rewards (GRPO's division by a tiny std amplifies that error).
  centred = grouped - grouped.mean(-1, keepdims=True)
  advantages = np.asarray(grpo.advantages(cfg.advantage, centred)).reshape(-1)
  informative = grouped.std(-1) > 0 if cfg.dynamic_filter else np.ones(len(prompts), bool)
  # The train batch: `train_groups` groups, informative ones first in draw order (DAPO's
  # refill when more problems were sampled than are trained on), then masked ones so the
  # batch shape does not depend on how many carried a signal.
  groups = np.argsort(~informative, kind="stable")[: train_groups or len(prompts)]
  rows_of = (groups[:, None] * g + np.arange(g)).reshape(-1)
  keep = np.repeat(informative[groups], g)

  metrics = {
    "reward": float(total.mean()),
    **{f"reward_{k}": float(v.mean()) for k, v in parts.items()},
    "confidence": float(confidence.mean()),
    "confidence_perturbed": float(noisy_scores["confidence"].mean()),
    "response_tokens": float(lengths.mean()),
    "informative_groups": int(informative.sum()),
    "kept_groups": int(informative[groups].sum()),
    "groups": len(prompts),
  }
  pick = lambda xs: [xs[i] for i in rows_of]  # noqa: E731
  row_prompts, row_tokens = pick(rep(prompts)), pick(tokens)
  advantages, confidence = advantages[rows_of], confidence[rows_of]
  gradient = cfg.confidence_gradient and step >= cfg.confidence_gradient_from
  d_clean, d_noisy, d_answer = (np.zeros(len(rows_of)) for _ in range(3))
  if gradient:
    d_clean, d_noisy, d_calibrated = rewards.confidence_gradients(
      cfg.reward_weights,
      confidence=confidence,
      confidence_perturbed=noisy_scores["confidence"][rows_of],
      correct=correct[rows_of],
      answered=answered[rows_of],
      form=cfg.calibration_form,
      calibration_confidence=calibrated[rows_of],
    )
    if spans is None:  # calibration judged conf(y|x): its term joins the row's
      d_clean = d_clean + d_calibrated
    else:  # the answer's confidence: a term on the answer's tokens (below)
      d_answer = d_calibrated
  noisy_rows = gradient and bool(cfg.reward_weights.get("sensitivity", 0.0))
  # Rows [0, n): the samples on their original images; then with noisy_rows the same
  # responses on the perturbed images; then with `solutions` one reference solution a problem.
  score_prompts, score_tokens, score_images = row_prompts, row_tokens, pick(rep(originals))
  if noisy_rows:
    score_prompts, score_tokens = score_prompts * 2, score_tokens * 2
    score_images = score_images + pick(rep(perturbed))
  if solutions:
    score_prompts = score_prompts + [prompts[i] for i in groups]
    score_tokens = score_tokens + [policy.solution_tokens(examples[i]) for i in groups]
    score_images = score_images + [originals[i] for i in groups]
  sb = policy.processor.scoring_batch(score_prompts, score_tokens, score_images)
  rows, r = sb.batch.input_ids.shape[0], sb.response_len
  old_logp = _right_align(token_logp[rows_of], lengths[rows_of], r)
  # The rewards' own gradient (module docstring): d R / d conf * conf on each row.
  advantages = advantages * keep + d_clean * confidence
  keep = keep | (d_clean != 0) | (d_answer != 0)
  token_adv = None
  if d_answer.any():
    # On the answer's tokens only, scaled by length / answer tokens so that, like the row
    # terms, a row's push is its token count times the gradient of its confidence.
    token_adv = np.zeros((len(rows_of), max(lengths[rows_of].max(), 1)))
    for j, i in enumerate(rows_of):
      m = spans[i]
      token_adv[j, : len(m)][m] = d_answer[j] * calibrated[i] * len(m) / m.sum()
    token_adv = _right_align(token_adv, lengths[rows_of], r)
  if noisy_rows:
    noisy_adv = d_noisy * noisy_scores["confidence"][rows_of]
    metrics["noisy_rows"] = int((noisy_adv != 0).sum())
    advantages = np.concatenate([advantages, noisy_adv])
    keep = np.concatenate([keep, noisy_adv != 0])
    old_logp = np.concatenate([old_logp, _last_columns(noisy_scores["token_logprobs"][rows_of], r)])
    if token_adv is not None:
      token_adv = np.concatenate([token_adv, np.zeros_like(token_adv)])
  sampled = len(keep)  # the rows sampled from the policy, in either image condition
  if solutions:  # in the mask; their advantage and old log-probs are the padding's zeros
    keep = np.concatenate([keep, np.ones(len(groups), bool)])
  if not keep.any():
    return None, r, metrics

  # Rows past the real ones only pad the batch to its bucket: zero mask, zero advantage.
  keep = np.concatenate([keep, np.zeros(rows - len(keep), bool)])
  batch = dict(sb.batch.model_inputs())
  batch.update(
    old_logp=_pad_rows(old_logp, rows),
    response_mask=sb.response_mask.astype(np.float32) * keep[:, None],
    advantages=_pad_rows(advantages, rows) * keep,
  )
  if token_adv is not None:
    batch["token_advantages"] = _pad_rows(token_adv, rows) * keep[:, None]
  if solutions:
    batch["sft_rows"] = ((np.arange(rows) >= sampled) & keep).astype(np.float32)
  if ref_state is not None:
    # The KL is estimated on the policy's own samples only: perturbed copies are not samples
    # of the policy in their context, so the reference pass skips them (and the solutions).
    ref_sb = (
      policy.processor.scoring_batch(row_prompts, row_tokens, pick(rep(originals)))
      if noisy_rows or solutions
      else sb
    )
    ref_logp = policy.scorer(ref_sb, state=ref_state)["token_logprobs"][: len(rows_of)]
    batch["ref_logp"] = _pad_rows(_last_columns(ref_logp, r), rows)
    if noisy_rows or solutions:
      batch["kl_rows"] = (np.arange(rows) < len(rows_of)).astype(np.float32)
  return batch, r, metrics


def _last_columns(x: np.ndarray, width: int) -> np.ndarray:
  """Right-aligned scores [B, R'] -> [B, width]: the last `width` columns, zeros on the left
  when R' < width (another scoring pass's bucket, e.g. without the longer solutions)."""
  x = x[:, -width:]
  return np.pad(x, ((0, 0), (width - x.shape[1], 0)))


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)]).astype(np.float32)
