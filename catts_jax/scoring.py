"""Teacher-forced scoring of (prompt with images, response) pairs in one jitted pass.

Returns per-token log-probs of the response, NMLP (mean negative log-prob of the response,
the paper's confidence `exp(-NMLP)`) and DeepConf token confidence (`-mean` of the top-k
log-probs) with its trace aggregations. Scoring the same response under several image
conditions (original, perturbed) is just more rows in the batch.

Sequences are left-padded so every response ends at the last position: the logits needed
are those of one static slice `[T - R - 1, T - 1)`, and the LM head runs on R positions
instead of T. It runs on `model.cfg.logits_chunk` of them at a time (`chunked_statistics`),
so `[rows, R, vocab]` logits never exist at once.

With a mesh, the scorer's rows are sharded over data x fsdp like the train step's
(`sharding.input_shardings`), and so are its outputs. Images are encoded by their own program
(`vision_program`), whose features the score program takes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from catts_jax import sharding, vision_program
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
  """Log-prob of each target and the top-k log-probs, from logits [..., V] (as float32).

  Only the gathered entries are normalised (logsumexp + gather), with log_softmax's own
  arithmetic, so no [..., V] log-prob array is kept and the values equal log_softmax's."""
  logits = logits.astype(jnp.float32)
  shifted = logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True))
  log_norm = jnp.log(jnp.exp(shifted).sum(-1))
  target_logp = jnp.take_along_axis(shifted, targets[..., None], -1)[..., 0] - log_norm
  if top_k == 0:
    return target_logp, jnp.zeros(target_logp.shape + (0,), jnp.float32)
  return target_logp, jax.lax.top_k(shifted, top_k)[0] - log_norm[..., None]


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


def response_hidden(model, inputs: dict, response_len: int) -> tuple[jax.Array, jax.Array]:
  """Final hidden states [B, R, D] of the positions predicting the last `response_len` tokens
  of each (left-padded) row, and those tokens [B, R]."""
  hidden, _ = model.hidden_states(**inputs)
  t = hidden.shape[1]
  return hidden[:, t - response_len - 1 : t - 1], inputs["input_ids"][:, t - response_len :]


def chunked_statistics(
  model, hidden: jax.Array, targets: jax.Array, top_k: int, remat: bool = False
) -> tuple[jax.Array, jax.Array]:
  """`token_statistics` of `model.logits(hidden)` ([B, R] and [B, R, top_k]), computed
  `model.cfg.logits_chunk` positions at a time (0: all R at once) so that only one chunk's
  [B, chunk, V] logits exist. When the chunk does not divide R, the positions are padded at
  the end to whole chunks and the padded results dropped. `remat`: when there are several chunks,
  each chunk's logits are recomputed in the backward pass instead of stored (for
  differentiated callers)."""
  b, r, d = hidden.shape
  chunk = model.cfg.logits_chunk
  chunk = r if chunk <= 0 or chunk >= r else chunk
  n = -(-r // chunk)
  pad = n * chunk - r
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
  targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)

  def one(xs):
    h, t = xs
    h = sharding.constrain(h, ("batch", "length", "activation_embed"))
    logits = sharding.constrain(model.logits(h), ("batch", "length", "vocab"))
    return token_statistics(logits, t, top_k)

  # One chunk holds no more than any chunk would: it is stored rather than recomputed.
  body = jax.checkpoint(one) if remat and n > 1 else one
  target_logp, topk_logp = jax.lax.map(body, (hidden, targets))  # [n, B, chunk, ...]
  target_logp = target_logp.swapaxes(0, 1).reshape(b, n * chunk)[:, :r]
  topk_logp = topk_logp.swapaxes(0, 1).reshape(b, n * chunk, top_k)[:, :r]
  return target_logp, topk_logp


class ScorerPrograms:
  """The scorer's jitted programs for one architecture (graphdef), confidence settings and
  mesh. Scorers of equal graphdefs (two checkpoints of one model) get the same object
  (`programs`), so a shape one of them compiled is not compiled again. `compilations` counts
  traces, i.e. compiled programs."""

  def __init__(self, graphdef: nnx.GraphDef, cfg: ConfidenceConfig, mesh: Mesh | None):
    self.graphdef, self.cfg, self.mesh = graphdef, cfg, mesh
    self.compilations = 0
    self._jits: dict = {}

  def _score_impl(self, state, inputs, response_mask, response_len: int):
    self.compilations += 1  # runs once per trace, i.e. per compiled shape
    model = nnx.merge(self.graphdef, state)
    hidden, targets = response_hidden(model, inputs, response_len)
    token_logp, topk_logp = chunked_statistics(model, hidden, targets, self.cfg.top_k)
    return response_scores(token_logp, topk_logp, response_mask, self.cfg)

  def jitted(self, state, inputs, response_mask):
    """The jitted score function; with a mesh, one per layout of (params, inputs), with
    explicit in/out shardings."""
    key, kwargs = None, {}
    if self.mesh is not None:
      state_s = jax.tree.map(lambda x: x.sharding, state)
      input_s = sharding.input_shardings({**inputs, "response_mask": response_mask}, self.mesh)
      mask_s = input_s.pop("response_mask")
      rows = response_mask.shape[0]
      out_s = NamedSharding(self.mesh, sharding.logical_to_spec(("batch",), (rows,), self.mesh))
      key = (jax.tree.structure(state_s), tuple(jax.tree.leaves(state_s)), tuple(input_s.items()), out_s)
      kwargs = dict(in_shardings=(state_s, input_s, mask_s), out_shardings=out_s)
    if key not in self._jits:
      self._jits[key] = jax.jit(self._score_impl, static_argnums=3, **kwargs)
    return self._jits[key]


@functools.lru_cache(maxsize=8)
def programs(graphdef: nnx.GraphDef, cfg: ConfidenceConfig, mesh: Mesh | None) -> ScorerPrograms:
  """One ScorerPrograms per (architecture, confidence settings, mesh); the last few are kept."""
  return ScorerPrograms(graphdef, cfg, mesh)


class Scorer:
  """Jitted teacher-forced scoring for one model; its programs are shared with every scorer of
  the same architecture (`ScorerPrograms`).

  With a `mesh` (params already placed on it, e.g. `sharding.shard_model`), rows and outputs
  are sharded over data x fsdp and the jitted function states every layout."""

  def __init__(self, model: nnx.Module, cfg: ConfidenceConfig = ConfidenceConfig(), mesh: Mesh | None = None):
    self.cfg = cfg
    self.model_cfg = model.cfg
    self.mesh = mesh
    self.graphdef, self.state = nnx.split(model)
    self.programs = programs(self.graphdef, cfg, mesh)

  @property
  def compilations(self) -> int:
    """Programs compiled for this scorer's architecture (shared with equal scorers')."""
    return self.programs.compilations

  def _mesh(self):
    return sharding.use_mesh(self.mesh)

  def lower(self, state, inputs: dict, response_mask, response_len: int):
    """Lower the jitted score function for (possibly abstract, sharded) arguments, laid out as
    `__call__` lays them out; `.compile()` it for memory and cost analyses without running it.
    With images, `inputs` hold their features (`vision_program.lower`), as `__call__` passes them."""
    with self._mesh():
      return self.programs.jitted(state, inputs, response_mask).lower(
        state, inputs, response_mask, response_len
      )

  def __call__(self, scoring_batch: ScoringBatch, state: nnx.State | None = None) -> dict[str, np.ndarray]:
    """Scores of the real rows as numpy; `state` overrides the params (e.g. during training)."""
    sb = scoring_batch
    state = self.state if state is None else state
    values = {**sb.batch.model_inputs(), "response_mask": sb.response_mask}
    if self.mesh is None:
      values = {k: jnp.asarray(v) for k, v in values.items()}
    else:
      values = sharding.put(values, sharding.input_shardings(values, self.mesh))
    mask = values.pop("response_mask")
    values = vision_program.with_features(self.model_cfg, self.graphdef, state, values, self.mesh)
    with self._mesh():
      out = self.programs.jitted(state, values, mask)(state, values, mask, sb.response_len)
    n = sb.batch.num_rows
    out = {k: sharding.to_host(v)[:n] for k, v in out.items()}
    out["response_mask"] = sb.response_mask[:n].astype(bool)
    return out
