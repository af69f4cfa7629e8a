"""The CDRL train step: sharded over 8 simulated devices it equals one device; NaN safety."""

import jax
import numpy as np
import pytest

from catts_jax import sharding
from catts_jax.models.qwen2_5_vl import load_hf
from catts_jax.processing import Processor
from catts_jax.rl.batch import TrainBatch, batch_shardings
from catts_jax.rl.grpo import LossConfig
from catts_jax.rl.learner import Learner, OptimizerConfig, response_logprobs
from catts_jax.verify import make_cases

LOSS = LossConfig(kl_coef=0.02, kl_estimator="k3")
# Adam normalises each element's update, so elements whose gradient is at float32 noise level
# (a sharded reduction sums in another order; measured gradient difference ~1e-6 against a
# norm of ~7) can move by a fraction of the learning rate differently. With a realistic
# learning rate (the paper's is 1e-6) that stays far below the 1e-5 parameter tolerance;
# at 3e-3 one element of ~30k differed by 1.3e-5.
OPT = OptimizerConfig(learning_rate=1e-4, warmup_steps=1, total_steps=10, clip_norm=1.0)


def train_batch(ckpt, model):
  """8 rows (prompts with 0-2 images, different responses) with rollout-like fields."""
  processor = Processor(ckpt)
  prompts, images = make_cases(processor)["padded_batch"]
  prompts, images = (prompts * 3)[:8], (images * 3)[:8]
  rng = np.random.default_rng(0)
  responses = [rng.integers(0, 500, rng.integers(3, 12)).tolist() for _ in prompts]
  sb = processor.scoring_batch(prompts, responses, images)
  inputs = {k: jax.numpy.asarray(v) for k, v in sb.batch.model_inputs().items()}
  logp = np.asarray(response_logprobs(model, inputs, sb.response_len))
  mask = sb.response_mask.astype(np.float32)
  batch = TrainBatch(
    **sb.batch.model_inputs(),
    old_logp=(logp + rng.normal(0, 0.05, logp.shape)) * mask,
    ref_logp=(logp + rng.normal(0, 0.05, logp.shape)) * mask,
    response_mask=mask,
    advantages=rng.normal(0, 1, 8).astype(np.float32),
  )
  return batch, sb.response_len


def run(ckpt, mesh, steps=3):
  model = load_hf(ckpt)
  batch, r = train_batch(ckpt, model)
  learner = Learner(model, LOSS, OPT, mesh=mesh)
  losses = [learner.step(batch, r)["loss"] for _ in range(steps)]
  return losses, learner


def test_sharded_step_equals_single_device(tiny_ckpt):
  """fsdp=4 x tensor=2: same loss at each of 3 steps and same params after them (<= 1e-5)."""
  single_losses, single = run(tiny_ckpt, None)
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  sharded_losses, sharded = run(tiny_ckpt, mesh)
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=0, atol=1e-5)
  assert single_losses[0] != single_losses[2]  # it trains
  a = jax.tree.leaves(single.params)
  b = jax.tree.leaves(sharded.params)
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-5)
  q = (
    sharded.model().language_model.layers.self_attn.q_proj.kernel.get_value()
  )  # [layers, embed, heads, head_dim]
  assert tuple(q.sharding.spec)[-3:] == ("fsdp", "tensor", None)
  # Adam moments are sharded like their params.
  mu = [x for x in jax.tree.leaves(sharded.opt_state) if x.shape == q.shape]
  assert mu and all(m.sharding.spec == q.sharding.spec for m in mu)


def test_non_finite_step_stops_and_keeps_params(tiny_ckpt):
  model = load_hf(tiny_ckpt)
  batch, r = train_batch(tiny_ckpt, model)
  learner = Learner(model, LOSS, OPT)
  learner.step(batch, r)
  state = lambda: jax.tree.leaves((learner.params, learner.opt_state))  # noqa: E731
  before = [np.asarray(x).copy() for x in state()]
  bad = batch.replace(advantages=np.full(8, np.nan, np.float32))
  with pytest.raises(FloatingPointError, match="non-finite loss"):
    learner.step(bad, r)
  for x, y in zip(before, state(), strict=True):  # params, moments and step count
    np.testing.assert_array_equal(x, np.asarray(y))
  learner.step(batch, r)  # and training goes on from there


def test_frozen_vision_tower(tiny_ckpt):
  # On a mesh, as train.cdrl runs it: the frozen params' optimizer state is masked out
  # (optax.MaskedNode), and the state's shardings must follow that structure.
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  model = load_hf(tiny_ckpt)
  batch, r = train_batch(tiny_ckpt, model)
  opt = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, freeze_vision=True)
  learner = Learner(model, LOSS, opt, mesh=mesh)
  vision_before = np.asarray(learner.model().visual.blocks.attn.qkv.kernel.get_value()).copy()
  text_before = np.asarray(learner.model().language_model.layers.mlp.up_proj.kernel.get_value()).copy()
  learner.step(batch, r)
  learner.step(batch, r)
  np.testing.assert_array_equal(vision_before, learner.model().visual.blocks.attn.qkv.kernel.get_value())
  assert not np.array_equal(text_before, learner.model().language_model.layers.mlp.up_proj.kernel.get_value())


def test_batch_shardings_per_field():
  """Rows over data x fsdp (positions' rows are dim 1), image slots replicated, unset fields
  None: the shardings are a TrainBatch of the batch's own structure."""
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  rows = lambda *shape: np.zeros((8, *shape), np.float32)  # noqa: E731
  batch = TrainBatch(
    input_ids=rows(5),
    positions=np.zeros((3, 8, 5), np.int32),
    attention_mask=rows(5),
    response_mask=rows(3),
    pixel_values=np.zeros((2, 4, 6), np.float32),
    advantages=rows(),
  )
  s = batch_shardings(batch, mesh)
  P = jax.sharding.PartitionSpec
  same = lambda sh, *spec: sh.is_equivalent_to(jax.sharding.NamedSharding(mesh, P(*spec)), len(spec))  # noqa: E731
  assert same(s.input_ids, ("data", "fsdp"), None) and same(s.advantages, ("data", "fsdp"))
  assert same(s.positions, None, ("data", "fsdp"), None) and same(s.pixel_values, None, None, None)
  assert not same(s.input_ids, None, None)  # the check can fail
  assert s.ref_logp is None and jax.tree.structure(s) == jax.tree.structure(batch)
