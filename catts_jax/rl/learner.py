"""The CDRL policy update: optimizer, loss over the model, and a sharded jitted train step.

Params and optimizer state live on a (data, fsdp, tensor) mesh, sharded by the params'
logical axes; the batch (`rl.batch.TrainBatch`) is sharded over data x fsdp. The step is
`jax.jit` with explicit in/out shardings and the train state donated, so updates happen in
place. The objective is the clipped policy loss (a `LossConfig`) or any function of the
response log-probs and the batch: supervised fine-tuning is the NLL (`rl.sft.nll`) on the
same Learner, with the same sharding and non-finite guard.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from catts_jax import sharding
from catts_jax.rl.batch import TrainBatch, batch_shardings
from catts_jax.rl.grpo import LossConfig, policy_loss
from catts_jax.scoring import chunked_statistics, response_hidden


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-6
  warmup_steps: int = 0
  total_steps: int = 1000  # cosine decay horizon
  weight_decay: float = 0.0
  clip_norm: float | None = 1.0
  accumulate: int = 1  # gradient accumulation: one update every `accumulate` steps
  freeze_vision: bool = False


def make_optimizer(cfg: OptimizerConfig, params: nnx.State) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay, global-norm clipping, optional gradient
  accumulation (optax.MultiSteps) and an optional frozen vision tower."""
  if cfg.warmup_steps:
    schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, cfg.warmup_steps, max(cfg.total_steps, cfg.warmup_steps + 1)
    )
  else:
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.total_steps, 1))
  opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
  if cfg.clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  if cfg.freeze_vision:
    labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if getattr(path[0], "key", None) == "visual" else "train", params
    )
    opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
  if cfg.accumulate > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=cfg.accumulate)
  return opt


def response_logprobs(model, inputs: dict, response_len: int) -> jax.Array:
  """Log-probs [B, R] of the last `response_len` tokens of each row under `model`, the LM
  head run `model.cfg.logits_chunk` positions at a time and recomputed per chunk in the
  backward pass, so neither pass holds [B, R, V] logits."""
  hidden, targets = response_hidden(model, inputs, response_len)
  return chunked_statistics(model, hidden, targets, top_k=0, remat=True)[0]


Objective = Callable[[jax.Array, TrainBatch], tuple[jax.Array, Mapping[str, jax.Array]]]


def objective(loss: LossConfig | Objective) -> Objective:
  """`loss` as a function `(logp [B, R], batch) -> (scalar, metrics)`: a LossConfig is the
  clipped policy objective (`grpo.policy_loss`) on the batch's RL fields; any other callable
  (e.g. `rl.sft.nll`) is used as it is."""
  if not isinstance(loss, LossConfig):
    return loss

  def clipped(logp: jax.Array, batch: TrainBatch):
    if batch.old_logp is None or batch.advantages is None:
      raise ValueError("the policy loss needs the batch's old_logp and advantages")
    fields = batch.fields()
    names = ("old_logp", "advantages", "response_mask", "ref_logp", "kl_rows", "token_advantages", "sft_rows")
    return policy_loss(logp, loss, **{k: fields[k] for k in names if k in fields})

  return clipped


def make_train_step(graphdef, rest, optimizer: optax.GradientTransformation, loss: LossConfig | Objective):
  """The pure train step `(params, opt_state, batch: TrainBatch, response_len) -> (params,
  opt_state, metrics)` for the model `nnx.merge(graphdef, params, rest)` and the objective
  `loss` (see `objective`).

  Pure in its arguments, so it can be jitted and lowered from abstract (`jax.ShapeDtypeStruct`)
  params, optimizer state and batch without materialising any weight (`train.compile`)."""
  fn = objective(loss)

  def loss_of(params, batch: TrainBatch, response_len):
    model = nnx.merge(graphdef, params, rest)
    return fn(response_logprobs(model, batch.model_inputs(), response_len), batch)

  def step(params, opt_state, batch: TrainBatch, response_len):
    (value, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params, batch, response_len)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # A non-finite step keeps the previous state (the inputs are donated, so the host could
    # not fall back to them); the caller sees the non-finite metrics and stops.
    ok = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    params, opt_state = jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state)
    return params, opt_state, {**metrics, "loss": value, "grad_norm": grad_norm}

  return step


def opt_state_shardings(optimizer: optax.GradientTransformation, params, param_shardings, mesh: Mesh):
  """Optimizer-state shardings: moments sharded like their params, counters replicated.
  `params` may be abstract. Frozen params have no moments (optax.MaskedNode, kept as is)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  return optax.tree_map_params(
    optimizer,
    lambda x, s: x if masked(x) else s,
    jax.eval_shape(optimizer.init, params),
    param_shardings,
    transform_non_params=lambda _: replicated,
    is_leaf=masked,
  )


def jit_train_step(
  step,
  response_len: int,
  mesh: Mesh | None = None,
  param_shardings=None,
  opt_shardings=None,
  batch_shardings=None,
):
  """`step` (from `make_train_step`) jitted for one response length: params and optimizer
  state donated; with a mesh, explicit in/out shardings (metrics replicated)."""
  kwargs = {}
  if mesh is not None:
    kwargs = dict(
      in_shardings=(param_shardings, opt_shardings, batch_shardings),
      out_shardings=(param_shardings, opt_shardings, NamedSharding(mesh, PartitionSpec())),
    )
  return jax.jit(lambda p, o, b: step(p, o, b, response_len), donate_argnums=(0, 1), **kwargs)


class Learner:
  """Holds graphdef, params, optimizer state and the compiled step.

  The learner takes over the model's param arrays (each step donates them); sample and score
  with the current params by passing `state=learner.params` to the sampler and scorer.

  `loss`: a LossConfig (the CDRL policy loss) or an objective `(logp, batch) -> (loss,
  metrics)` (`objective`). `step` takes a `TrainBatch` of host (numpy) arrays;
  `response_len` is static.
  """

  def __init__(
    self,
    model: nnx.Module,
    loss: LossConfig | Objective,
    opt_cfg: OptimizerConfig,
    mesh: Mesh | None = None,
    rules: Mapping | None = None,
  ):
    self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
    self.mesh = mesh
    self.optimizer = make_optimizer(opt_cfg, params)
    if mesh is not None:
      params = jax.device_put(params, sharding.state_shardings(params, mesh, rules))
    self.params = params
    init = jax.jit(self.optimizer.init)
    if mesh is not None:  # moments sharded like their params, counters replicated
      opt_shardings = opt_state_shardings(
        self.optimizer, params, jax.tree.map(lambda x: x.sharding, params), mesh
      )
      init = jax.jit(self.optimizer.init, out_shardings=opt_shardings)
    self.opt_state = init(params)
    self._train_step = make_train_step(self.graphdef, self.rest, self.optimizer, loss)
    self._steps: dict = {}

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params, self.rest)

  def resume(self, checkpoints) -> int:
    """Take the params and optimizer state of `checkpoints`' latest complete checkpoint (a
    catts_jax.checkpoint.Checkpointer); the step to go on from (0 when there is none)."""
    restored = checkpoints.restore(self.params, self.opt_state)
    if restored is None:
      return 0
    self.params, self.opt_state, record = restored
    return record["step"]

  def _compiled(self, batch: TrainBatch, response_len: int):
    key = (response_len, jax.tree.structure(batch), tuple(x.shape for x in jax.tree.leaves(batch)))
    if key not in self._steps:
      shardings = {}
      if self.mesh is not None:
        shardings = dict(
          param_shardings=jax.tree.map(lambda x: x.sharding, self.params),
          opt_shardings=jax.tree.map(lambda x: x.sharding, self.opt_state),
          batch_shardings=batch_shardings(batch, self.mesh),
        )
      self._steps[key] = jit_train_step(self._train_step, response_len, self.mesh, **shardings)
    return self._steps[key]

  def step(self, batch: TrainBatch, response_len: int) -> dict[str, float]:
    """One optimisation step. A non-finite loss or gradient raises FloatingPointError and
    leaves params and optimizer state as they were.

    With several processes (jax.distributed), every process passes the same global batch and
    each device takes its shard of the rows and of the image slots (a row's image tokens read
    the features of any slot, by `image_index`, so no process could build its rows' slots alone)."""
    if self.mesh is None:
      batch = jax.tree.map(jnp.asarray, batch)
    else:
      batch = sharding.put(batch, batch_shardings(batch, self.mesh))
    step = self._compiled(batch, response_len)
    self.params, self.opt_state, metrics = step(self.params, self.opt_state, batch)
    metrics = {k: float(v) for k, v in metrics.items()}
    if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
      raise FloatingPointError(
        f"non-finite loss {metrics['loss']} or gradient norm {metrics['grad_norm']}; the update was not applied"
      )
    return metrics
