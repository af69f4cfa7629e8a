"""GRPO-family advantages and policy losses, chosen by name in config.

Advantages take rewards [P, G] (G samples per prompt) and return one value per sample:
- "grpo": `(r - mean) / (std + eps)` within the group (std with ddof=1, as TRL and verl);
- "rloo": `r - mean of the other G - 1 samples` (leave-one-out baseline);
- "dr_grpo": `r - mean` (Dr. GRPO drops the std division, which favours easy/hard groups).

The policy loss is the clipped-ratio objective over response tokens,
`max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))` with `r = exp(logp - old_logp)`,
optionally dual-clipped for A < 0 (at most `-A * dual_clip`), plus `kl_coef` times a KL
estimate to a frozen reference: "k1" `logp - ref` or the low-variance "k3"
`exp(ref - logp) - (ref - logp) - 1`, plus `sft_coef` times the token-mean negative
log-likelihood of reference-solution rows (`sft_rows`; InstructGPT's PPO-ptx anchor: RL
on a small policy moves what it perceives, the reference solutions hold it). Token terms
are aggregated by
- "token_mean": mean over all response tokens of the batch (DAPO);
- "seq_mean": mean over each sequence's tokens, then over sequences (original GRPO);
- "seq_sum": each sequence's token sum divided by a constant (`max_tokens`; Dr. GRPO).
`old_logp` comes from the sampler, so several optimisation steps can reuse one rollout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


def grpo_advantages(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
  mean = rewards.mean(-1, keepdims=True)
  std = rewards.std(-1, keepdims=True, ddof=1)
  return (rewards - mean) / (std + eps)


def rloo_advantages(rewards: jax.Array) -> jax.Array:
  g = rewards.shape[-1]
  others = (rewards.sum(-1, keepdims=True) - rewards) / (g - 1)
  return rewards - others


def dr_grpo_advantages(rewards: jax.Array) -> jax.Array:
  return rewards - rewards.mean(-1, keepdims=True)


ADVANTAGES: dict[str, Callable[[jax.Array], jax.Array]] = {
  "grpo": grpo_advantages,
  "rloo": rloo_advantages,
  "dr_grpo": dr_grpo_advantages,
}


def advantages(name: str, rewards: jax.Array) -> jax.Array:
  """rewards [P, G] -> advantages [P, G] by estimator name."""
  if name not in ADVANTAGES:
    raise ValueError(f"unknown advantage estimator {name!r}; choose from {sorted(ADVANTAGES)}")
  if rewards.ndim != 2 or rewards.shape[-1] < 2:
    raise ValueError(f"rewards must be [prompts, G >= 2], got shape {rewards.shape}")
  return ADVANTAGES[name](rewards)


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  return logp - ref_logp


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  d = ref_logp - logp
  return jnp.exp(d) - d - 1


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  eps_low: float = 0.2
  eps_high: float = 0.28
  dual_clip: float | None = None  # e.g. 3.0; None = off
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  aggregation: str = "token_mean"
  max_tokens: int | None = None  # the constant for "seq_sum"
  sft_coef: float = 0.0  # weight of the reference solutions' NLL (rows marked by sft_rows)


def aggregate(
  values: jax.Array,
  mask: jax.Array,
  how: str,
  max_tokens: int | None = None,
  *,
  tokens: jax.Array | None = None,
  rows: jax.Array | None = None,
) -> jax.Array:
  """values, mask [B, T] -> scalar: a sum over tokens or rows divided by batch-wide constants,
  `tokens` (the token count of "token_mean", default max(mask.sum(), 1)) and `rows` (the row
  count of the others, default B). Passing a whole batch's counts (`loss_normalisers`) makes
  the aggregate of a slice of its rows that slice's share: the shares of any split of the rows
  sum to the whole batch's value (the train step's micro-batches)."""
  mask = mask.astype(values.dtype)
  rows = values.shape[0] if rows is None else rows
  if how == "token_mean":
    return (values * mask).sum() / (jnp.maximum(mask.sum(), 1) if tokens is None else tokens)
  if how == "seq_mean":
    per_seq = (values * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1)
    return per_seq.sum() / rows
  if how == "seq_sum":
    if not max_tokens:
      raise ValueError("aggregation 'seq_sum' needs max_tokens")
    return ((values * mask).sum(-1) / max_tokens).sum() / rows
  raise ValueError(f"unknown aggregation {how!r}; expected token_mean, seq_mean or seq_sum")


def token_masks(
  response_mask: jax.Array, kl_rows: jax.Array | None = None, sft_rows: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[B, T] masks of the policy-gradient tokens (sampled rows), the KL tokens (those of
  `kl_rows`) and the reference-solution tokens (those of `sft_rows`)."""
  sft_mask = jnp.zeros_like(response_mask)
  if sft_rows is not None:
    sft_mask = response_mask * sft_rows[:, None].astype(response_mask.dtype)
  mask = response_mask - sft_mask
  kl_mask = mask if kl_rows is None else mask * kl_rows[:, None].astype(mask.dtype)
  return mask, kl_mask, sft_mask


def loss_normalisers(
  response_mask: jax.Array, kl_rows: jax.Array | None = None, sft_rows: jax.Array | None = None
) -> dict[str, jax.Array]:
  """The denominators of `policy_loss`'s means over a whole batch (rows, policy-gradient,
  KL and reference-solution token counts), so that a micro-batch's loss is its share."""
  count = lambda m: jnp.maximum(m.sum(), 1).astype(jnp.float32)  # noqa: E731
  mask, kl_mask, sft_mask = token_masks(response_mask, kl_rows, sft_rows)
  return {
    "rows": jnp.asarray(response_mask.shape[0], jnp.float32),
    "tokens": count(mask),
    "kl_tokens": count(kl_mask),
    "sft_tokens": count(sft_mask),
  }


def policy_loss(
  logp: jax.Array,
  cfg: LossConfig,
  *,
  old_logp: jax.Array,
  advantages: jax.Array,
  response_mask: jax.Array,
  ref_logp: jax.Array | None = None,
  kl_rows: jax.Array | None = None,
  token_advantages: jax.Array | None = None,
  sft_rows: jax.Array | None = None,
  norms: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """logp, old_logp, ref_logp, response_mask [B, T]; advantages [B] -> (loss, metrics). The
  keyword arguments are `rl.batch.TrainBatch`'s fields of the same names.

  kl_rows [B]: 1 where the row is a sample of the policy, the only rows on which the KL
  estimators estimate the KL; 0 leaves a row out of the KL term (default: all rows in).
  token_advantages [B, T]: added to each row's advantage token by token (a reward gradient
  that acts on some tokens only, e.g. a final answer's).
  sft_rows [B]: 1 where the row is a reference solution, not a sample: it joins only the NLL
  term (`sft_coef`), never the policy-gradient or KL terms.
  norms: the batch-wide denominators (`loss_normalisers`) when these rows are a micro-batch of
  a larger batch; the loss and metrics are then this micro-batch's shares (default: this batch's)."""
  if cfg.sft_coef and sft_rows is None:
    raise ValueError("sft_coef > 0 needs sft_rows (the reference-solution rows)")
  mask, kl_mask, sft_mask = token_masks(response_mask, kl_rows, sft_rows)
  norms = loss_normalisers(response_mask, kl_rows, sft_rows) if norms is None else norms
  tokens, rows = norms["tokens"], norms["rows"]
  adv = advantages[:, None].astype(logp.dtype)
  if token_advantages is not None:
    adv = adv + token_advantages.astype(logp.dtype)
  ratio = jnp.exp(logp - old_logp)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high)
  pg = jnp.maximum(unclipped, clipped)
  if cfg.dual_clip is not None:
    pg = jnp.where(adv < 0, jnp.minimum(pg, -adv * cfg.dual_clip), pg)
  token_loss = pg
  metrics = {
    "pg_loss": aggregate(pg, mask, cfg.aggregation, cfg.max_tokens, tokens=tokens, rows=rows),
    "clip_fraction": aggregate((clipped > unclipped).astype(logp.dtype), mask, "token_mean", tokens=tokens),
    "ratio_mean": aggregate(ratio, mask, "token_mean", tokens=tokens),
  }
  if cfg.kl_coef:
    if ref_logp is None:
      raise ValueError("kl_coef > 0 needs ref_logp")
    if cfg.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"unknown KL estimator {cfg.kl_estimator!r}; choose from {sorted(KL_ESTIMATORS)}")
    # Outside kl_mask the reference is the policy itself (KL 0, gradient 0): ref_logp is
    # padding there, and an estimator's exp of padding could overflow into 0 * inf.
    ref_logp = jnp.where(kl_mask > 0, ref_logp, jax.lax.stop_gradient(logp))
    kl = KL_ESTIMATORS[cfg.kl_estimator](logp, ref_logp)
    token_loss = token_loss + cfg.kl_coef * kl
    metrics["kl"] = aggregate(kl, kl_mask, "token_mean", tokens=norms["kl_tokens"])
  loss = aggregate(token_loss, mask, cfg.aggregation, cfg.max_tokens, tokens=tokens, rows=rows)
  if sft_rows is not None:
    nll = aggregate(-logp, sft_mask, "token_mean", tokens=norms["sft_tokens"])
    loss = loss + cfg.sft_coef * nll
    metrics["sft_nll"] = nll
  return loss, metrics
