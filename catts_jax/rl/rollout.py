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
from PIL import Image

from catts_jax import perturb
from catts_jax.policy import Policy
from catts_jax.rl import grpo, rewards
from catts_jax.rl.batch import TrainBatch
from catts_jax.sampling import SamplingConfig, cast_state


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
  # Rows per sampler call and per scorer call (multiples of group_size; 0 = every row in one
  # call). Apart, because they bound different things: the KV cache (decoding wants as many
  # rows as fit) and a teacher-forced pass's activations.
  sample_micro_batch: int = 0
  score_micro_batch: int = 0

  def __post_init__(self):
    for name in ("sample_micro_batch", "score_micro_batch"):
      if getattr(self, name) % self.group_size:
        raise ValueError(
          f"rollout.{name}={getattr(self, name)}: expected a multiple of group_size={self.group_size} "
          "(a problem's samples share one prefill and one image encode)"
        )
    # The learner's log-probs and the ratio's old_logp are the temperature-1, untruncated
    # policy's; samples drawn from a tempered or top-p policy would get a gradient that is
    # not the sampled policy's.
    if self.temperature != 1.0 or self.top_p != 1.0:
      raise ValueError(
        f"rollout.temperature={self.temperature}, top_p={self.top_p}: the learner scores the "
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


@dataclasses.dataclass
class Prompts:
  """Stage 1 (`perturb_images`): P problems' prompts, their images and perturbed copies."""

  prompts: list[str]  # [P] chat prompts
  originals: list[list[Image.Image]]  # [P][images]
  perturbed: list[list[Image.Image]]  # [P][images], the same images perturbed


@dataclasses.dataclass
class Samples:
  """Stage 2 (`sample`): G samples per problem, N = P * G rows in problem-major order."""

  tokens: list[np.ndarray]  # [N][L_i] the response tokens, stop token included
  lengths: np.ndarray  # [N] L_i
  texts: list[str]  # [N] decoded responses
  token_logp: np.ndarray  # [N, L] the sampler's log-probs, response at the start of the row
  confidence: np.ndarray  # [N] conf(y|x) = exp(-NMLP)


@dataclasses.dataclass
class Rewards:
  """Stage 4 (`compute_rewards`): each sample's rewards and group advantage."""

  total: np.ndarray  # [N] weighted reward
  parts: dict[str, np.ndarray]  # name -> [N] each reward before weighting
  correct: np.ndarray  # [N] float32 1/0
  answered: np.ndarray  # [N] bool: the response states a final answer
  calibrated: np.ndarray  # [N] the confidence calibration judges (response's or answer's)
  spans: list[np.ndarray] | None  # [N][L_i] bool answer-token masks ("answer" span), else None
  advantages: np.ndarray  # [N] float32 group advantages
  informative: np.ndarray  # [P] bool: the group carries a signal (or filtering is off)


@dataclasses.dataclass
class Selection:
  """Stage 5 (`select_groups`): the K trained groups and their K * G sample rows."""

  groups: np.ndarray  # [K] problem indices, informative first in draw order
  rows: np.ndarray  # [K * G] sample indices into the N rows
  keep: np.ndarray  # [K * G] bool: the row's group carries a signal


def _repeat(xs: Sequence, g: int) -> list:
  """[P] -> [P * G]: each item G times (the samples' order)."""
  return [x for x in xs for _ in range(g)]


def perturb_images(
  policy: Policy, examples: Sequence[dict], cfg: RolloutConfig, saliency=None, seed: int = 0
) -> Prompts:
  """Stage 1: each problem's prompt, images and perturbed images (CLIP-targeted regions with
  `cfg.targeted`); image j of problem i is perturbed with seed `seed + 1009 i + j`."""
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
  return Prompts(prompts, originals, perturbed)


def sample(
  policy: Policy, prompts: Prompts, cfg: RolloutConfig, key: jax.Array, state: nnx.State | None = None
) -> Samples:
  """Stage 2: G = `cfg.group_size` samples of each prompt on its original images, with their
  token log-probs and conf(y|x), under `state` (default: the policy's own params); with
  `cfg.sample_micro_batch`, sample_micro_batch / G prompts per sampler call (call i draws with
  fold_in(key, i))."""
  g = cfg.group_size
  sampling = SamplingConfig(
    max_new_tokens=cfg.max_new_tokens,
    n=g,
    temperature=cfg.temperature,
    top_p=cfg.top_p,
    stop_ids=policy.stop_ids(),
    confidence=policy.confidence,
  )
  tokens, lengths, token_logp, confidence = [], [], [], []
  chunks = _chunks(len(prompts.prompts), cfg.sample_micro_batch // g)
  for i, part in enumerate(chunks):
    batch = policy.processor([prompts.prompts[j] for j in part], [prompts.originals[j] for j in part])
    out = policy.sampler(
      batch, sampling, key if len(chunks) == 1 else jax.random.fold_in(key, i), state=state
    )
    rows = len(part) * g
    lengths.append(out.lengths.reshape(-1))
    tokens += [t[:n] for t, n in zip(out.tokens.reshape(rows, -1), lengths[-1])]
    token_logp.append(out.logprobs.reshape(rows, -1))
    confidence.append(out.scores["confidence"].reshape(-1))
  texts = [policy.processor.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
  return Samples(
    tokens=tokens,
    lengths=np.concatenate(lengths),
    texts=texts,
    token_logp=np.concatenate(token_logp),
    confidence=np.concatenate(confidence),
  )


def _chunks(n: int, size: int) -> list[np.ndarray]:
  """[0, n) in consecutive pieces of `size` (0: one piece)."""
  return np.array_split(np.arange(n), range(size, n, size)) if size else [np.arange(n)]


def score_perturbed(
  policy: Policy, prompts: Prompts, samples: Samples, cfg: RolloutConfig, state: nnx.State | None = None
) -> dict[str, np.ndarray]:
  """Stage 3: one scoring pass of every sample under its problem's perturbed images: the
  scorer's dict, "confidence" [N] (conf(y|x_noisy)) and "token_logprobs" [N, R'] among it."""
  g = cfg.group_size
  return policy.score(
    _repeat(prompts.prompts, g),
    samples.tokens,
    _repeat(prompts.perturbed, g),
    state=state,
    micro_batch=cfg.score_micro_batch,
  )


def compute_rewards(
  policy: Policy,
  examples: Sequence[dict],
  benchmark: str | None,
  cfg: RolloutConfig,
  prompts: Prompts,
  samples: Samples,
  noisy: dict[str, np.ndarray],
) -> Rewards:
  """Stage 4: grade the N samples, weigh the rewards and take each group's advantages over
  its G samples (`cfg.advantage`); with `cfg.dynamic_filter`, groups whose rewards are all
  equal are marked uninformative."""
  g = cfg.group_size
  correct, answered = rewards.grade(samples.texts, _repeat(list(examples), g), benchmark)
  confidence = samples.confidence
  if cfg.calibration_span == "answer":
    spans = [answer_mask(policy.processor.tokenizer, t) for t in samples.tokens]
    calibrated = np.array(
      [
        np.exp(samples.token_logp[i, : len(m)][m].mean()) if len(m) else confidence[i]
        for i, m in enumerate(spans)
      ]
    )
  elif cfg.calibration_span == "response":
    spans, calibrated = None, confidence
  else:
    raise ValueError(f"calibration_span {cfg.calibration_span!r}: expected 'response' or 'answer'")
  total, parts = rewards.compute(
    cfg.reward_weights,
    _repeat(prompts.prompts, g),
    samples.texts,
    examples=_repeat(list(examples), g),
    benchmark=benchmark,
    correct=correct,
    answered=answered,
    confidence=confidence,
    confidence_perturbed=noisy["confidence"],
    calibration_confidence=calibrated,
    form=cfg.calibration_form,
  )
  grouped = total.reshape(len(prompts.prompts), g).astype(np.float64)
  # Every estimator is shift-invariant: centring in float64 first keeps float32 from
  # subtracting nearly equal rewards (GRPO's division by a tiny std amplifies that error).
  centred = grouped - grouped.mean(-1, keepdims=True)
  advantages = np.asarray(grpo.advantages(cfg.advantage, centred)).reshape(-1)
  informative = grouped.std(-1) > 0 if cfg.dynamic_filter else np.ones(len(prompts.prompts), bool)
  return Rewards(total, parts, correct, answered, calibrated, spans, advantages, informative)


def select_groups(informative: np.ndarray, g: int, train_groups: int | None = None) -> Selection:
  """Stage 5: informative [P] -> the `train_groups` groups (default: all) the batch holds,
  informative ones first in draw order (DAPO's refill when more problems were sampled than
  are trained on), then masked ones so the batch shape does not depend on how many carried a
  signal."""
  groups = np.argsort(~informative, kind="stable")[: train_groups or len(informative)]
  rows = (groups[:, None] * g + np.arange(g)).reshape(-1)
  return Selection(groups, rows, np.repeat(informative[groups], g))


def confidence_terms(
  cfg: RolloutConfig, samples: Samples, noisy: dict[str, np.ndarray], scored: Rewards, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Stage 4b, with `confidence_gradient`: the rewards' own gradient on the selected rows
  [K * G] (module docstring): (d R / d conf, d R / d conf_noisy, d R / d conf_answer)."""
  d_clean, d_noisy, d_calibrated = rewards.confidence_gradients(
    cfg.reward_weights,
    confidence=samples.confidence[rows],
    confidence_perturbed=noisy["confidence"][rows],
    correct=scored.correct[rows],
    answered=scored.answered[rows],
    form=cfg.calibration_form,
    calibration_confidence=scored.calibrated[rows],
  )
  if scored.spans is None:  # calibration judged conf(y|x): its term joins the row's
    return d_clean + d_calibrated, d_noisy, np.zeros(len(rows))
  return d_clean, d_noisy, d_calibrated  # the answer's confidence: a term on its tokens


def assemble(
  policy: Policy,
  examples: Sequence[dict],
  cfg: RolloutConfig,
  prompts: Prompts,
  samples: Samples,
  noisy: dict[str, np.ndarray],
  scored: Rewards,
  sel: Selection,
  terms: tuple[np.ndarray, np.ndarray, np.ndarray],
  *,
  noisy_rows: bool,
  solutions: bool,
  ref_state: nnx.State | None,
  metrics: dict[str, Any],
) -> tuple[TrainBatch | None, int]:
  """Stage 6: the train batch [B rows, R response tokens] of the selected samples (None when
  no row carries a signal) and R. Rows [0, n): the samples on their original images; then,
  with the confidence gradient and a sensitivity reward, the same responses on the perturbed
  images; then with `solutions` one reference solution a problem; then padding to the row
  bucket (zero mask, zero advantage). `terms`: `confidence_terms` [K * G] each (zeros
  without the gradient); `noisy_rows`: the perturbed copies join. Adds "noisy_rows" to
  `metrics`."""
  g, rows_of = cfg.group_size, sel.rows
  pick = lambda xs: [xs[i] for i in rows_of]  # noqa: E731
  row_prompts, row_tokens = pick(_repeat(prompts.prompts, g)), pick(samples.tokens)
  confidence, lengths = samples.confidence[rows_of], samples.lengths[rows_of]
  d_clean, d_noisy, d_answer = terms
  score_prompts, score_tokens, score_images = row_prompts, row_tokens, pick(_repeat(prompts.originals, g))
  if noisy_rows:
    score_prompts, score_tokens = score_prompts * 2, score_tokens * 2
    score_images = score_images + pick(_repeat(prompts.perturbed, g))
  if solutions:
    score_prompts = score_prompts + [prompts.prompts[i] for i in sel.groups]
    score_tokens = score_tokens + [policy.solution_tokens(examples[i]) for i in sel.groups]
    score_images = score_images + [prompts.originals[i] for i in sel.groups]
  sb = policy.processor.scoring_batch(score_prompts, score_tokens, score_images)
  rows, r = sb.batch.input_ids.shape[0], sb.response_len
  old_logp = _right_align(samples.token_logp[rows_of], lengths, r)
  # The rewards' own gradient (module docstring): d R / d conf * conf on each row.
  advantages = scored.advantages[rows_of] * sel.keep + d_clean * confidence
  keep = sel.keep | (d_clean != 0) | (d_answer != 0)
  token_adv = None
  if d_answer.any():
    # On the answer's tokens only, scaled by length / answer tokens so that, like the row
    # terms, a row's push is its token count times the gradient of its confidence.
    token_adv = np.zeros((len(rows_of), max(lengths.max(), 1)))
    for j, i in enumerate(rows_of):
      m = scored.spans[i]
      token_adv[j, : len(m)][m] = d_answer[j] * scored.calibrated[i] * len(m) / m.sum()
    token_adv = _right_align(token_adv, lengths, r)
  if noisy_rows:
    noisy_adv = d_noisy * noisy["confidence"][rows_of]
    metrics["noisy_rows"] = int((noisy_adv != 0).sum())
    advantages = np.concatenate([advantages, noisy_adv])
    keep = np.concatenate([keep, noisy_adv != 0])
    old_logp = np.concatenate([old_logp, _last_columns(noisy["token_logprobs"][rows_of], r)])
    if token_adv is not None:
      token_adv = np.concatenate([token_adv, np.zeros_like(token_adv)])
  sampled = len(keep)  # the rows sampled from the policy, in either image condition
  if solutions:  # in the mask; their advantage and old log-probs are the padding's zeros
    keep = np.concatenate([keep, np.ones(len(sel.groups), bool)])
  if not keep.any():
    return None, r

  keep = np.concatenate([keep, np.zeros(rows - len(keep), bool)])
  fields = dict(
    old_logp=_pad_rows(old_logp, rows),
    response_mask=sb.response_mask.astype(np.float32) * keep[:, None],
    advantages=_pad_rows(advantages, rows) * keep,
  )
  if token_adv is not None:
    fields["token_advantages"] = _pad_rows(token_adv, rows) * keep[:, None]
  if solutions:
    fields["sft_rows"] = ((np.arange(rows) >= sampled) & keep).astype(np.float32)
  if ref_state is not None:
    # The KL is estimated on the policy's own samples only: perturbed copies are not samples
    # of the policy in their context, so the reference pass skips them (and the solutions).
    originals = pick(_repeat(prompts.originals, g))
    ref = policy.score(row_prompts, row_tokens, originals, state=ref_state, micro_batch=cfg.score_micro_batch)
    ref_logp = ref["token_logprobs"][: len(rows_of)]
    fields["ref_logp"] = _pad_rows(_last_columns(ref_logp, r), rows)
    if noisy_rows or solutions:
      fields["kl_rows"] = (np.arange(rows) < len(rows_of)).astype(np.float32)
  return TrainBatch(**sb.batch.model_inputs(), **fields), r


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
) -> tuple[TrainBatch | None, int, dict[str, Any]]:
  """(train batch or None if every group was filtered, its response_len, metrics): the stages
  perturb -> sample -> score -> rewards/advantages -> select -> assemble.

  `train_groups`: how many of the sampled groups the batch holds (default: all); sample more
  problems than that for DAPO's refill of filtered groups. `step`: the train step, for
  `confidence_gradient_from`. `solutions`: each trained problem's reference solution on its
  original images joins the batch as a row marked by `sft_rows` (`LossConfig.sft_coef`)."""
  prompts = perturb_images(policy, examples, cfg, saliency, seed)
  # The rollout's passes read the weights in the compute dtype, laid out on the policy's mesh
  # (a rollout mesh may differ from the trainer's): cast and placed once for the step.
  state = nnx.state(policy.model) if state is None else state
  state = cast_state(state, policy.cfg.compute_dtype, policy.sampler.mesh)
  samples = sample(policy, prompts, cfg, key, state)
  noisy = score_perturbed(policy, prompts, samples, cfg, state)
  scored = compute_rewards(policy, examples, benchmark, cfg, prompts, samples, noisy)
  sel = select_groups(scored.informative, cfg.group_size, train_groups)
  metrics = {
    "reward": float(scored.total.mean()),
    **{f"reward_{k}": float(v.mean()) for k, v in scored.parts.items()},
    "confidence": float(samples.confidence.mean()),
    "confidence_perturbed": float(noisy["confidence"].mean()),
    "response_tokens": float(samples.lengths.mean()),
    "informative_groups": int(scored.informative.sum()),
    "kept_groups": int(scored.informative[sel.groups].sum()),
    "groups": len(prompts.prompts),
  }
  gradient = cfg.confidence_gradient and step >= cfg.confidence_gradient_from
  zeros = tuple(np.zeros(len(sel.rows)) for _ in range(3))
  terms = confidence_terms(cfg, samples, noisy, scored, sel.rows) if gradient else zeros
  batch, r = assemble(
    policy,
    examples,
    cfg,
    prompts,
    samples,
    noisy,
    scored,
    sel,
    terms,
    noisy_rows=gradient and bool(cfg.reward_weights.get("sensitivity", 0.0)),
    solutions=solutions,
    ref_state=ref_state,
    metrics=metrics,
  )
  return batch, r, metrics


def _last_columns(x: np.ndarray, width: int) -> np.ndarray:
  """Right-aligned scores [B, R'] -> [B, width]: the last `width` columns, zeros on the left
  when R' < width (another scoring pass's bucket, e.g. without the longer solutions)."""
  x = x[:, -width:]
  return np.pad(x, ((0, 0), (width - x.shape[1], 0)))


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)]).astype(np.float32)
