"""Teacher-forced scoring of (prompt with images, response) pairs in one jitted pass.

Returns per-token log-probs of the response, NMLP (mean negative log-prob of the response,
the paper's confidence `exp(-NMLP)`) and DeepConf token confidence (`-mean` of the top-k
log-probs) with its trace aggregations. Scoring the same response under several image
conditions (original, perturbed) is just more rows in the batch.

Sequences are left-padded so every response ends at the last position: the logits needed
are those of one static slice `[T - R - 1, T - 1)`, and the LM head runs on R positions
instead of T.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from catts_jax.processing import ScoringBatch


@dataclasses.dataclass(frozen=True)
class ConfidenceConfig:
  top_k: int = 20  # DeepConf token confidence: -mean of the top-k log-probs
  tail: int = 50  # tail confidence: mean over the last `tail` response tokens
  window: int = 2048  # sliding-window (group) size; clipped to the response length
  bottom_fraction: float = 0.1  # bottom-10% group confidence


# --- masked trace aggregations (jittable; `mask` marks one contiguous run of tokens) -------


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(values.dtype)
  return (values * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1)


def tail_mean(values: jax.Array, mask: jax.Array, tail: int) -> jax.Array:
  """Mean over the last `tail` masked tokens of each row."""
  mask = mask.astype(bool)
  from_end = jnp.cumsum(mask[:, ::-1], axis=-1)[:, ::-1]  # masked tokens at or after i
  return masked_mean(values, mask & (from_end <= tail))


def window_means(values: jax.Array, mask: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
  """Means of all length-w windows inside each row's masked run, w = min(window, run length).

  Returns (means [B, L], valid [B, L]) indexed by the window's last token.
  """
  mask = mask.astype(values.dtype)
  length = mask.sum(-1)
  w = jnp.maximum(jnp.minimum(window, length), 1)[:, None]
  zero = jnp.zeros_like(mask[:, :1])
  sums = jnp.cumsum(jnp.concatenate([zero, values * mask], -1), -1)  # sums[:, i] = sum of first i
  counts = jnp.cumsum(jnp.concatenate([zero, mask], -1), -1)
  end = jnp.arange(1, mask.shape[1] + 1)[None]
  start = end - w
  start_c = jnp.clip(start, 0).astype(jnp.int32)
  window_sum = sums[:, 1:] - jnp.take_along_axis(sums, start_c, -1)
  window_count = counts[:, 1:] - jnp.take_along_axis(counts, start_c, -1)
  valid = (start >= 0) & (window_count == w)
  return window_sum / w, valid


def bottom_fraction_mean(means: jax.Array, valid: jax.Array, fraction: float) -> jax.Array:
  """Mean of the lowest `fraction` of valid windows (at least one)."""
  n = valid.sum(-1)
  k = jnp.maximum(jnp.floor(n * fraction), 1)
  ordered = jnp.sort(jnp.where(valid, means, jnp.inf), axis=-1)
  take = jnp.arange(means.shape[-1])[None] < k[:, None]
  return jnp.where(take, ordered, 0).sum(-1) / k


def trace_confidences(token_conf: jax.Array, mask: jax.Array, cfg: ConfidenceConfig) -> dict:
  """DeepConf aggregations of per-token confidence over each row's response."""
  means, valid = window_means(token_conf, mask, cfg.window)
  return {
    "conf_mean": masked_mean(token_conf, mask),
    "conf_tail": tail_mean(token_conf, mask, cfg.tail),
    "conf_bottom": bottom_fraction_mean(means, valid, cfg.bottom_fraction),
    "conf_min_window": jnp.where(valid, means, jnp.inf).min(-1),
  }


def token_statistics(logits: jax.Array, targets: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
  """Log-prob of each target and the top-k log-probs, from float32 logits [..., V]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  target_logp = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  return target_logp, jax.lax.top_k(logp, top_k)[0]


def response_scores(token_logp, topk_logp, mask, cfg: ConfidenceConfig) -> dict:
  """Every per-response number from per-token log-probs (shared by the scorer and sampler)."""
  mask = mask.astype(bool)
  token_conf = -topk_logp.mean(-1)
  nmlp = -masked_mean(token_logp, mask)
  return {
    "token_logprobs": jnp.where(mask, token_logp, 0.0),
    "token_conf": jnp.where(mask, token_conf, 0.0),
    "nmlp": nmlp,
    "confidence": jnp.exp(-nmlp),
    **trace_confidences(token_conf, mask, cfg),
  }


# --- the scorer ------------------------------------------------------------------------------


def response_logits(model, inputs: dict, response_len: int) -> tuple[jax.Array, jax.Array]:
  """Logits predicting the last `response_len` tokens of each (left-padded) row, [B, R, V],
  and those tokens [B, R]; the LM head runs on these R positions only."""
  hidden, _ = model.hidden_states(**inputs)
  t = hidden.shape[1]
  return model.logits(hidden[:, t - response_len - 1 : t - 1]), inputs["input_ids"][:, t - response_len :]


class Scorer:
  """Jitted teacher-forced scoring for one model. `compilations` counts traces."""

  def __init__(self, model: nnx.Module, cfg: ConfidenceConfig = ConfidenceConfig()):
    self.cfg = cfg
    self.graphdef, self.state = nnx.split(model)
    self.compilations = 0
    self._score = jax.jit(self._score_impl, static_argnames=("response_len",))

  def _score_impl(self, state, inputs, response_mask, response_len: int):
    self.compilations += 1  # runs once per trace, i.e. per compiled shape
    logits, targets = response_logits(nnx.merge(self.graphdef, state), inputs, response_len)
    token_logp, topk_logp = token_statistics(logits, targets, self.cfg.top_k)
    return response_scores(token_logp, topk_logp, response_mask, self.cfg)

  def __call__(self, scoring_batch: ScoringBatch, state: nnx.State | None = None) -> dict[str, np.ndarray]:
    """Scores of the real rows as numpy; `state` overrides the params (e.g. during training)."""
    sb = scoring_batch
    inputs = {k: jnp.asarray(v) for k, v in sb.batch.model_inputs().items()}
    state = self.state if state is None else state
    out = self._score(state, inputs, jnp.asarray(sb.response_mask), response_len=sb.response_len)
    n = sb.batch.num_rows
    out = {k: np.asarray(v)[:n] for k, v in out.items()}
    out["response_mask"] = sb.response_mask[:n].astype(bool)
    return out
