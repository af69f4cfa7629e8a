"""Batched, KV-cached sampling: one jitted prefill, then a jitted `lax.while_loop` decode.

- Left-padded prompts of different lengths and image counts share one batch; `n` samples
  per prompt share one prefill (the cache rows are repeated after it).
- Greedy (temperature 0), temperature, top-k and top-p; stop on any of `stop_ids` or at
  `max_new_tokens`; the stop token is kept as the last token of the response.
- Every step also records the log-prob of the chosen token and the top-k log-probs under
  the policy's own distribution (raw logits, temperature 1), so NMLP and DeepConf
  confidences come out of the same pass (`scoring.response_scores`).
- Contrastive decoding (VCD): a second image condition is prefilled and decoded in lockstep
  on the same tokens, as extra rows of the same batch; tokens are drawn from
  `(1 + a) l_orig - a l_contrast` restricted to `l_orig >= log(b) + max l_orig`.
- Deterministic for a given PRNG key: step i uses `fold_in(key, i)`, and the same on one
  device or many. With one key per prompt (`draws.prompt_keys`), sample j of a prompt draws from
  `fold_in(fold_in(key_p, j), i)`: a prompt's samples then do not depend on its batch.
- With a mesh, every layout is stated (`carry_shardings`): prompt rows, sample rows and the
  KV cache over data x fsdp, KV heads over tensor where they divide, the weights as they lie
  (pass `cast_state`'s compute-dtype copy to decode from bf16 weights cast once, not per token).
- The image and video placeholder tokens are never sampled.
- Images are encoded by their own program (`vision_program`), whose features the prefill takes.
- `compact_every` K: the loop stops every K steps and the rows still running continue in a
  smaller batch (a power of two) once they fit half of it; with a key per row, every row's
  tokens equal the uncompacted loop's.
- `share_prompt`: each prompt's KV stays one copy, read by its `n` rows in one product with
  their own reply slots in the same softmax (`layers.attention_shared_prompt`).
- `grow_cache`: the cache grows by doubling as the responses do, so a step reads at most twice
  the slots it needs instead of prompt + max_new_tokens (most of them empty for most steps
  when max_new_tokens is long). The same tokens as the full cache, up to float rounding in the
  attention's sums (empty slots are masked out either way).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from catts_jax import sharding, vision_program
from catts_jax.decode_cache import first_slots, repeat_rows, shared_prompt_cache, stack_conditions
from catts_jax.draws import contrastive_logits, draw_tokens, row_keys
from catts_jax.models.qwen2_5_vl.text import init_cache
from catts_jax.processing import Batch
from catts_jax.scoring import ConfidenceConfig, response_scores, token_statistics


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 256
  n: int = 1  # samples per prompt
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = no top-k filter
  top_p: float = 1.0  # 1 = no nucleus filter
  stop_ids: tuple[int, ...] = ()  # empty = never stop early
  vcd_alpha: float = 1.0  # contrastive strength a
  vcd_beta: float = 0.1  # plausibility cut b
  confidence: ConfidenceConfig = ConfidenceConfig()
  # > 0: every this many steps, rows that finished leave the batch once the rest fits half of
  # it (a batch no longer runs at full width until its longest row ends). Needs a key per
  # prompt (`draws.prompt_keys`) to leave every row's tokens unchanged; 0: one loop to the end.
  compact_every: int = 0
  # True: the KV cache starts at the prompt's slots rounded up to a power of two and doubles as
  # the responses grow (a copy each time), so a step reads at most twice the slots it needs,
  # however large max_new_tokens is; one compiled loop per size reached. False: prompt +
  # max_new_tokens slots from the start, every step reading all of them, one compiled loop.
  grow_cache: bool = False
  # True: a prompt's KV is kept once and read by its `n` rows together, not copied into each
  # row's cache (n times fewer prompt reads a step). Rows then stay with their prompt, so it
  # excludes compact_every.
  share_prompt: bool = False

  def __post_init__(self):
    if self.share_prompt and self.compact_every:
      raise ValueError(
        f"share_prompt with compact_every={self.compact_every}: compaction moves rows away from "
        "their prompt's shared KV; turn one of them off"
      )


@dataclasses.dataclass
class SampleOutput:
  """numpy, real prompts only: tokens/logprobs [B, n, L], topk_logprobs [B, n, L, k],
  lengths [B, n] (stop token included), and the confidences of `scoring.response_scores`
  ([B, n] each)."""

  tokens: np.ndarray
  lengths: np.ndarray
  logprobs: np.ndarray
  topk_logprobs: np.ndarray
  scores: dict[str, np.ndarray]

  def token_lists(self) -> list[list[list[int]]]:
    return [[t[:n].tolist() for t, n in zip(row_t, row_n)] for row_t, row_n in zip(self.tokens, self.lengths)]


def carry_axes(path: tuple, ndim: int) -> tuple[str | None, ...]:
  """Logical axes of one leaf of a KV cache or decode carry, by its path: K and V
  [rows, kv_heads, ., .], every other array per row, the step, the key and the cache's
  end index replicated."""
  names = [getattr(p, "key", None) for p in path]
  if ndim == 0 or "key" in names:
    return (None,) * ndim
  if names[-1] in ("k", "v"):
    return ("batch", "kv_heads", None, None)
  return ("batch",) + (None,) * (ndim - 1)


def carry_shardings(carry, mesh) -> dict:
  """NamedShardings of a KV cache, prefill output or decode carry (arrays or
  ShapeDtypeStructs): the one layout the sampler runs and `aot.plan` compiles."""

  def one(path, x):
    return jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(carry_axes(path, x.ndim), x.shape, mesh))

  return jax.tree_util.tree_map_with_path(one, carry)


def _pin(tree, mesh):
  """State the layout of a carry-like tree inside a jitted function (identity without a mesh)."""
  return tree if mesh is None else jax.lax.with_sharding_constraint(tree, carry_shardings(tree, mesh))


def cast_state(state: nnx.State, dtype, mesh: jax.sharding.Mesh | None = None) -> nnx.State:
  """Floating params cast to the compute dtype, once, and with a `mesh` laid out on it by their
  logical axes (a rollout mesh other than the trainer's). Each layer casts its weights to the
  compute dtype at use, so decoding from this copy gives the same numbers without a cast per
  token. Returns `state` itself when there is nothing to do."""
  dtype = jnp.dtype(dtype)
  floating = lambda x: jnp.issubdtype(x.dtype, jnp.floating)  # noqa: E731
  out_shardings = None if mesh is None else sharding.state_shardings(state, mesh)
  same_layout = out_shardings is None or all(
    x.sharding.is_equivalent_to(s, x.ndim)
    for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(out_shardings))
  )
  if same_layout and all(x.dtype == dtype for x in jax.tree.leaves(state) if floating(x)):
    return state
  cast = lambda s: jax.tree.map(lambda x: x.astype(dtype) if floating(x) else x, s)  # noqa: E731
  return jax.jit(cast, out_shardings=out_shardings)(state)


class SamplerPrograms:
  """The sampler's jitted programs for one architecture (graphdef), pad id and mesh. Samplers
  of equal graphdefs (two checkpoints of one model, a policy loaded again) get the same
  object (`programs`), so a shape one of them compiled is not compiled again; the weights are
  every program's argument. `compilations` counts traces, i.e. compiled programs."""

  def __init__(self, graphdef: nnx.GraphDef, cfg, pad_id: int, mesh: jax.sharding.Mesh | None):
    self.graphdef, self.cfg, self.pad_id, self.mesh = graphdef, cfg, pad_id, mesh
    self.compilations = 0
    self.prefill = jax.jit(self._prefill_impl, static_argnames=("cache_len",))
    self.decode = jax.jit(self._decode_impl, static_argnames=("cfg", "contrastive"), donate_argnums=(1,))
    self.start = jax.jit(self._start_impl, static_argnames=("cfg", "groups"))
    self.compact = jax.jit(self._compact_impl, static_argnames=("groups",))
    self.grow = jax.jit(self._grow_impl, static_argnames=("slots",))

  def _prefill_impl(self, state, inputs, cache_len: int):
    """Prompt pass: last-position logits [B, V] and the filled cache."""
    self.compilations += 1
    model = nnx.merge(self.graphdef, state)
    b = inputs["input_ids"].shape[0]
    cache = _pin(init_cache(self.cfg.text, b, cache_len, self.cfg.compute_dtype), self.mesh)
    hidden, cache = model.hidden_states(**inputs, cache=cache)
    return _pin((model.logits(hidden[:, -1]), cache), self.mesh)

  def _decode_impl(self, state, carry, cfg: SamplingConfig, contrastive: bool):
    """The decode loop from `carry` until every row is done or step reaches carry["stop"]."""
    self.compilations += 1

    def unstacked():
      model = nnx.merge(self.graphdef, state)
      model.language_model.unstack_layers()
      return model

    # The decoder layers' weights sliced out of their stack once, before the loop: XLA:CPU
    # reads them fastest so. On TPU those slices are copies of every weight (the 7B's planned
    # decode on v5e:4x4: 3.3 GB more temporaries, 2.2x the bytes a step); sliced inside the
    # loop body, XLA reads them in place.
    model = None if sharding.platform(self.mesh) == "tpu" else unstacked()
    rows = carry["tokens"].shape[0]  # samples; with contrast, the model sees 2 * rows
    stop_ids = jnp.asarray(cfg.stop_ids or (-1,), jnp.int32)
    banned = jnp.asarray([self.cfg.image_token_id, self.cfg.video_token_id], jnp.int32)

    def split(logits):
      if contrastive:
        orig, other = logits[:rows], logits[rows:]
        return orig, contrastive_logits(orig, other, cfg.vcd_alpha, cfg.vcd_beta)
      return logits, logits

    def record(c, logits):
      """Choose the token for step c["step"] from logits, record it and its log-probs."""
      step = c["step"]
      # The LM head computes its vocabulary shard (gathering the logits, not the head's
      # weights), then each device draws its own rows' tokens over the whole vocabulary (left
      # to propagation, every device sampled every row).
      logits = sharding.constrain(sharding.constrain(logits, ("batch", "vocab")), ("batch", None))
      policy_logits, sample_logits = split(logits)
      # Image/video placeholders are never a valid output: emitted, they would be read as
      # image slots when the response is scored or continued.
      sample_logits = sample_logits.at[:, banned].set(-jnp.inf)
      token = draw_tokens(sample_logits, c["key"], step, cfg)
      token = jnp.where(c["done"], self.pad_id, token)
      token_logp, topk_logp = token_statistics(policy_logits, token, cfg.confidence.top_k)
      c = dict(c)
      c["tokens"] = c["tokens"].at[:, step].set(token)
      c["logprobs"] = c["logprobs"].at[:, step].set(jnp.where(c["done"], 0.0, token_logp))
      c["topk"] = c["topk"].at[:, step].set(jnp.where(c["done"][:, None], 0.0, topk_logp))
      c["lengths"] = jnp.where(c["done"], c["lengths"], step + 1)
      c["done"] = c["done"] | jnp.isin(token, stop_ids)
      c["step"] = step + 1
      return c

    def body(c):
      token = c["tokens"][:, c["step"] - 1]
      pos = c["next_pos"] + c["step"] - 1
      if contrastive:
        token, pos = jnp.concatenate([token, token]), jnp.concatenate([pos, pos])
      positions = jnp.broadcast_to(pos[None, :, None], (3, pos.shape[0], 1))
      ones = jnp.ones((token.shape[0], 1), jnp.int32)
      step_model = unstacked() if model is None else model
      logits, cache = step_model(token[:, None], positions, ones, cache=c["cache"])
      return record({**c, "cache": cache}, logits[:, 0])

    def cond(c):
      return (c["step"] < jnp.minimum(cfg.max_new_tokens, c["stop"])) & ~jnp.all(c["done"])

    carry = _pin(carry, self.mesh)
    logits = carry.pop("logits")
    # The prefill's logits choose token 0; a later segment of a compacted loop starts past it.
    first = jax.lax.cond(carry["step"] == 0, lambda c: record(c, logits), lambda c: c, carry)
    carry = jax.lax.while_loop(cond, lambda c: _pin(body(c), self.mesh), _pin(first, self.mesh))
    mask = jnp.arange(cfg.max_new_tokens)[None] < carry["lengths"][:, None]
    scores = response_scores(carry["logprobs"], carry["topk"], mask, cfg.confidence)
    # The whole carry is returned so every donated buffer (the cache above all) is reused
    # in place by the loop instead of being copied into it.
    return _pin(carry | {"logits": logits, "scores": scores}, self.mesh)

  def decode_carry(self, cache, logits, next_pos, num_rows: int, cfg: SamplingConfig, key, groups: int = 1):
    """The decode loop's initial state from the prefill's cache and last logits (one row per
    prompt, `groups` image conditions stacked): each prompt's rows repeated `cfg.n` times.
    Works under `jax.eval_shape` too (abstract carry for ahead-of-time compiles)."""
    n, rows = cfg.n, next_pos.shape[0] * cfg.n
    repeat = functools.partial(repeat_rows, n=n, groups=groups)
    k, steps = cfg.confidence.top_k, cfg.max_new_tokens
    if cfg.share_prompt:
      prompt_slots = cache["valid"].shape[1]
      cache = shared_prompt_cache(cache, n, first_slots(prompt_slots, steps, cfg.grow_cache) - prompt_slots)
    else:
      cache = repeat(cache)
    return {
      "cache": cache,
      "logits": repeat(logits),
      "tokens": jnp.full((rows, steps), self.pad_id, jnp.int32),
      "logprobs": jnp.zeros((rows, steps), jnp.float32),
      "topk": jnp.zeros((rows, steps, k), jnp.float32),
      "lengths": jnp.zeros((rows,), jnp.int32),
      # Rows that only pad the batch to its bucket start finished, so they never hold the loop.
      "done": jnp.arange(rows) >= num_rows * n,
      "next_pos": jnp.repeat(jnp.asarray(next_pos, jnp.int32), n),
      "step": jnp.zeros((), jnp.int32),
      "stop": jnp.asarray(steps, jnp.int32),  # the loop pauses here (compact_every, grow_cache)
      "key": jnp.copy(key) if key.ndim == 0 else row_keys(key, n),  # copied: the carry is donated
    }

  def _start_impl(self, cache, logits, next_pos, key, num_rows: int, cfg: SamplingConfig, groups: int):
    return _pin(self.decode_carry(cache, logits, next_pos, num_rows, cfg, key, groups), self.mesh)

  def _grow_impl(self, carry, slots: int):
    def pad(x, axis):
      widths = [(0, 0)] * x.ndim
      widths[axis] = (0, slots - x.shape[axis])
      return jnp.pad(x, widths)

    cache = carry["cache"]
    layers = [{"k": pad(c["k"], 3), "v": pad(c["v"], 2)} for c in cache["layers"]]
    cache = cache | {"layers": layers, "valid": pad(cache["valid"], 1)}
    return _pin(carry | {"cache": cache}, self.mesh)

  def _compact_impl(self, carry, index, live, groups: int):
    rows = carry["tokens"].shape[0]

    def take(x):
      if x.ndim == 0:
        return x
      if x.shape[0] == rows:
        return x[index]
      g = x.reshape(groups, rows, *x.shape[1:])  # the cache and logits: rows per image condition
      return g[:, index].reshape(-1, *x.shape[1:])

    out = jax.tree.map(take, carry)
    out["done"] = out["done"] | (jnp.arange(index.shape[0]) >= live)
    return _pin(out, self.mesh)


@functools.lru_cache(maxsize=8)
def programs(graphdef: nnx.GraphDef, cfg, pad_id: int, mesh: jax.sharding.Mesh | None) -> SamplerPrograms:
  """One SamplerPrograms per (architecture, pad id, mesh); the last few are kept."""
  return SamplerPrograms(graphdef, cfg, pad_id, mesh)


class Sampler:
  """Jitted prefill and decode for one model; `state` can be swapped per call (training).
  With a `mesh`, rows are sharded over data x fsdp throughout (`carry_shardings`)."""

  def __init__(self, model: nnx.Module, pad_id: int = 0, mesh: jax.sharding.Mesh | None = None):
    self.graphdef, self.state = nnx.split(model)
    self.cfg = model.cfg
    self.pad_id = pad_id
    self.mesh = mesh
    self.programs = programs(self.graphdef, self.cfg, pad_id, mesh)
    p = self.programs
    self._prefill, self._decode, self._start_jit = p.prefill, p.decode, p.start
    self._compact_jit, self._grow_jit = p.compact, p.grow

  @property
  def compilations(self) -> int:
    """Programs compiled for this sampler's architecture (shared with equal samplers')."""
    return self.programs.compilations

  def decode_carry(self, *args, **kwargs) -> dict:
    """`SamplerPrograms.decode_carry`."""
    return self.programs.decode_carry(*args, **kwargs)

  def _start(self, cache, logits, next_pos, num_rows: int, cfg: SamplingConfig, key, groups: int):
    """`decode_carry`, built by one program on the devices and laid out as the decode loop
    takes it (with a mesh: `carry_shardings`; also across processes)."""
    return self._start_jit(cache, logits, next_pos, key, np.int32(num_rows), cfg=cfg, groups=groups)

  def lower_decode(self, state, carry, cfg: SamplingConfig, contrastive: bool = False):
    """Lower the jitted decode loop for (possibly abstract, sharded) `state` and `carry`;
    `.compile()` the result for memory and cost analyses without running it."""
    with self._mesh():
      return self._decode.lower(state, carry, cfg=cfg, contrastive=contrastive)

  def lower_prefill(self, state, inputs: dict, cache_len: int):
    """Lower the jitted prefill for (possibly abstract, sharded) `state` and model inputs; with
    images, their features (`vision_program.lower`), as `__call__` passes them."""
    with self._mesh():
      return self._prefill.lower(state, inputs, cache_len=cache_len)

  def _mesh(self):
    return sharding.use_mesh(self.mesh)

  def _inputs(self, batch: Batch, state) -> dict[str, jax.Array]:
    """The prefill's inputs on the devices, images encoded by their own program."""
    inputs = batch.model_inputs()
    if self.mesh is None:
      inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    else:
      inputs = sharding.put(inputs, sharding.input_shardings(inputs, self.mesh))
    return vision_program.with_features(self.cfg, self.graphdef, state, inputs, self.mesh)

  def __call__(
    self,
    batch: Batch,
    cfg: SamplingConfig,
    key: jax.Array,
    contrast: Batch | None = None,
    state: nnx.State | None = None,
  ) -> SampleOutput:
    state = self.state if state is None else state
    if contrast is not None and not np.array_equal(contrast.input_ids, batch.input_ids):
      raise ValueError("contrastive decoding needs the same prompts (tokens) under both image conditions")
    prompt_slots = batch.input_ids.shape[1]
    cache_len = first_slots(prompt_slots, cfg.max_new_tokens, cfg.grow_cache)
    if cfg.share_prompt:  # the prefill's cache holds the prompts alone; `decode_carry` adds the replies'
      cache_len = prompt_slots
    next_pos = batch.attention_mask.sum(1) + batch.rope_deltas  # text position of token 0
    with self._mesh():
      logits, cache = self._prefill(state, self._inputs(batch, state), cache_len=cache_len)
      if contrast is not None:
        logits_c, cache_c = self._prefill(state, self._inputs(contrast, state), cache_len=cache_len)
        logits, cache = stack_conditions([logits, logits_c]), stack_conditions([cache, cache_c])
      groups = 2 if contrast is not None else 1
      carry = self._start(cache, logits, next_pos, batch.num_rows, cfg, key, groups)
      out = self._run(state, carry, cfg, groups, prompt_slots)
    n, b = cfg.n, batch.num_rows

    def unflatten(x):
      return x.reshape(x.shape[0] // n, n, *x.shape[1:])[:b]

    return SampleOutput(
      tokens=unflatten(out["tokens"]),
      lengths=unflatten(out["lengths"]),
      logprobs=unflatten(out["logprobs"]),
      topk_logprobs=unflatten(out["topk"]),
      scores={name: unflatten(v) for name, v in out["scores"].items()},
    )

  def _run(self, state, carry, cfg: SamplingConfig, groups: int, prompt_slots: int) -> dict:
    """The decode loop from `carry` to the end, compacted every cfg.compact_every steps and
    its cache grown when full (`grow_cache`); the rows' outputs (tokens, lengths, logprobs,
    topk, scores) as numpy, in carry row order. The cache's first `prompt_slots` hold prompts."""
    contrastive = groups == 2
    if not cfg.compact_every and not cfg.grow_cache:
      return _outputs(self._decode(state, carry, cfg=cfg, contrastive=contrastive))
    rows = carry["tokens"].shape[0]
    full = prompt_slots + cfg.max_new_tokens
    prompt = carry["cache"].get("prompt")  # a shared prompt's slots, held apart from the rows' own
    shared = 0 if prompt is None else prompt["valid"].shape[1]
    where = np.arange(rows)  # each carry row's row in the output; -1: padding
    outputs, step = None, 0
    while True:
      carry = {k: v for k, v in carry.items() if k != "scores"}  # the loop's input has none
      slots = shared + carry["cache"]["valid"].shape[1]
      # Step s >= 1 writes slot prompt_slots + s - 1: the loop pauses when the cache is full.
      stop = min(step + cfg.compact_every if cfg.compact_every else full, slots - prompt_slots + 1)
      carry["stop"] = np.int32(stop)
      carry = self._decode(state, carry, cfg=cfg, contrastive=contrastive)
      done, step = sharding.to_host(carry["done"]), int(sharding.to_host(carry["step"]))
      finished = done.all() or step >= cfg.max_new_tokens
      if not finished and step == slots - prompt_slots + 1:
        carry = self._grow(carry, min(full, 2 * slots) - shared)
      alive = np.flatnonzero(~done & (where >= 0))
      width = 1 << max(len(alive) - 1, 0).bit_length()  # the next power of two
      if not finished and (not cfg.compact_every or width > len(where) // 2):
        continue
      got = _outputs(carry)
      if outputs is None:
        outputs = {k: np.zeros((rows, *v.shape[1:]), v.dtype) for k, v in _flat(got).items()}
      keep = where >= 0
      for k, v in _flat(got).items():
        outputs[k][where[keep]] = v[keep]
      if finished:
        return _unflat(outputs)
      # The rows still running, padded with a finished row marked done, in a smaller batch.
      pad = np.flatnonzero(done)[:1].repeat(width - len(alive))
      index = np.concatenate([alive, pad]).astype(np.int32)
      carry = self._compact(carry, index, len(alive), groups)
      where = np.concatenate([where[alive], np.full(len(pad), -1)])

  def _grow(self, carry, slots: int):
    """The carry with its rows' KV cache padded to `slots` slots (empty, not valid)."""
    carry = {k: v for k, v in carry.items() if k != "scores"}
    return self._grow_jit(carry, slots=slots)

  def _compact(self, carry, index, live: int, groups: int):
    """The carry's rows `index` (the first `live` still running, the rest padding, marked done)."""
    carry = {k: v for k, v in carry.items() if k != "scores"}
    return self._compact_jit(carry, jnp.asarray(index), np.int32(live), groups=groups)


def _outputs(carry) -> dict:
  """A decode result's per-row outputs on the host."""
  host = sharding.to_host
  keys = ("tokens", "lengths", "logprobs", "topk")
  return {**{k: host(carry[k]) for k in keys}, "scores": {k: host(v) for k, v in carry["scores"].items()}}


def _flat(outputs: dict) -> dict:
  return {
    **{k: v for k, v in outputs.items() if k != "scores"},
    **{f"scores/{k}": v for k, v in outputs["scores"].items()},
  }


def _unflat(flat: dict) -> dict:
  scores = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("scores/")}
  return {**{k: v for k, v in flat.items() if not k.startswith("scores/")}, "scores": scores}
