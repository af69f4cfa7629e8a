"""Micro-batches inside the train step equal one whole-batch step; FSDP gathers bf16 weights.

A batch of G rows per prompt sharing each prompt's image slot, taken whole and in
micro-batches (`Learner(micro_batch=...)`): loss, metrics, gradient norm and params after 3
steps agree to 1e-5 in float32, for every aggregation with the KL term on, on one device and
sharded over 8."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_hf import random_image

from catts_jax import sharding
from catts_jax.aot.shapes import Shapes, train_batch
from catts_jax.aot.state import abstract_train_state
from catts_jax.models.qwen2_5_vl import ModelConfig, load_hf
from catts_jax.processing import Processor
from catts_jax.rl import sft
from catts_jax.rl.batch import TrainBatch
from catts_jax.rl.grpo import LossConfig
from catts_jax.rl.learner import (
  Learner,
  OptimizerConfig,
  jit_train_step,
  make_train_step,
  objective,
  response_logprobs,
  split_rows,
)

PROMPTS, G = 4, 4  # 16 rows, 4 image slots (one a prompt, shared by its G rows)
# As in test_learner: a learning rate at which Adam's per-element normalisation of
# float32-noise gradients stays far below the 1e-5 parameter tolerance.
# (With the vision blocks scanned, 1e-4 moved one element 1.05e-5 apart on the mesh.)
OPT = OptimizerConfig(learning_rate=5e-5, warmup_steps=1, total_steps=10, clip_norm=1.0)


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
  """The tiny model's graphdef and state, and a 16-row batch of 4 prompts x G samples, each
  prompt with its own image, rollout-like RL fields, one padding row and two rows outside the
  KL term."""
  model = load_hf(tiny_ckpt)
  processor = Processor(tiny_ckpt)
  rng = np.random.default_rng(0)
  images = [random_image(rng, 56 + 28 * (i % 2), 56) for i in range(PROMPTS)]
  prompt = processor.chat_prompt("What is in the picture?", 1)
  rows = PROMPTS * G
  responses = [rng.integers(0, 400, 2 + (5 * i) % 9).tolist() for i in range(rows)]
  sb = processor.scoring_batch([prompt] * rows, responses, [[im] for im in images for _ in range(G)])
  assert sb.batch.pixel_values.shape[0] == PROMPTS  # the G rows of a prompt share its slot
  inputs = {k: jnp.asarray(v) for k, v in sb.batch.model_inputs().items()}
  logp = np.asarray(response_logprobs(model, inputs, sb.response_len))
  mask = sb.response_mask.astype(np.float32)
  mask[5] = 0  # a padding row
  kl_rows = np.ones(rows, np.float32)
  kl_rows[[2, 11]] = 0
  batch = TrainBatch(
    **sb.batch.model_inputs(),
    old_logp=(logp + rng.normal(0, 0.1, logp.shape)) * mask,
    ref_logp=(logp + rng.normal(0, 0.1, logp.shape)) * mask,
    response_mask=mask,
    advantages=rng.normal(0, 1, rows).astype(np.float32),
    kl_rows=kl_rows,
  )
  graphdef, state = nnx.split(model)
  return graphdef, state, batch, sb.response_len


def train(setup, loss, mesh, micro_batch, steps=3, opt=OPT):
  graphdef, state, batch, r = setup
  model = nnx.merge(graphdef, jax.tree.map(jnp.array, state))  # a fresh copy: the Learner donates
  learner = Learner(model, loss, opt, mesh=mesh, micro_batch=micro_batch)
  return [learner.step(batch, r) for _ in range(steps)], learner


def assert_same_steps(setup, loss, mesh, micro_batch, steps=3):
  whole_metrics, whole = train(setup, loss, mesh, 0, steps)
  micro_metrics, micro = train(setup, loss, mesh, micro_batch, steps)
  for a, b in zip(whole_metrics, micro_metrics):
    assert a.keys() == b.keys()
    for k in a:
      assert b[k] == pytest.approx(a[k], abs=1e-5), k
  assert whole_metrics[0]["loss"] != whole_metrics[-1]["loss"]  # it trains
  for x, y in zip(jax.tree.leaves(whole.params), jax.tree.leaves(micro.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-5)
  return whole, micro


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_sum"])
def test_shares_of_the_micro_batches_sum_to_the_whole_objective(aggregation):
  """Every aggregation's objective (`Additive`, the KL and SFT terms on): the shares of the
  4 micro-batches `split_rows` makes (loss, metrics and the gradient in log-probs) sum to the
  whole batch's values. The model-level tests below run one aggregation."""
  rng = np.random.default_rng(1)
  rows, r = 16, 6
  mask = (rng.random((rows, r)) < 0.8).astype(np.float32)
  mask[5] = 0  # a padding row
  fields = dict(
    input_ids=np.zeros((rows, r), np.int32), positions=np.zeros((3, rows, r), np.int32),
    attention_mask=np.ones((rows, r), np.int32), response_mask=mask,
    old_logp=-rng.exponential(1.0, (rows, r)).astype(np.float32) * mask,
    ref_logp=-rng.exponential(1.0, (rows, r)).astype(np.float32) * mask,
    advantages=rng.normal(0, 1, rows).astype(np.float32),
    kl_rows=(np.arange(rows) % 5 != 2).astype(np.float32),
    sft_rows=(np.arange(rows) % 7 == 3).astype(np.float32),
  )  # fmt: skip
  batch = TrainBatch(**fields)
  fn = objective(LossConfig(kl_coef=0.05, aggregation=aggregation, max_tokens=r, sft_coef=0.5))
  logp = jnp.asarray(fields["old_logp"] + rng.normal(0, 0.2, (rows, r)).astype(np.float32) * mask)
  (whole, whole_metrics), whole_grad = jax.value_and_grad(fn, has_aux=True)(logp, batch)
  norms = fn.normalisers(batch)
  n = 4
  micro, split_logp = split_rows(batch, n), logp.reshape(rows // n, n, r).swapaxes(0, 1)
  total, metrics, grads = 0.0, None, []
  for i in range(n):
    rows_i = jax.tree.map(lambda x, i=i: x[i], micro)
    (value, m), g = jax.value_and_grad(fn.share, has_aux=True)(split_logp[i], rows_i, norms)
    total, grads = total + value, grads + [g]
    metrics = m if metrics is None else jax.tree.map(jnp.add, metrics, m)
  assert float(total) == pytest.approx(float(whole), abs=1e-6)
  for k in whole_metrics:
    assert float(metrics[k]) == pytest.approx(float(whole_metrics[k]), abs=1e-6), k
  grad = jnp.stack(grads).swapaxes(0, 1).reshape(rows, r)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(whole_grad), rtol=0, atol=1e-7)
  assert np.abs(np.asarray(whole_grad)).max() > 0


@pytest.mark.parametrize(
  "aggregation, mesh_shape",
  [("token_mean", None), ("token_mean", {"data": 2, "fsdp": 4})],
  ids=["1dev-token_mean", "data2xfsdp4-token_mean"],
)
def test_micro_batches_equal_whole_batch(setup, aggregation, mesh_shape):
  """4 micro-batches of 4 rows on one device, 2 of 8 on data 2 x fsdp 4 (each device keeps
  one row of every micro-batch); the vision tower trains (its params are compared too)."""
  loss = LossConfig(kl_coef=0.05, kl_estimator="k3", aggregation=aggregation, max_tokens=setup[3])
  mesh = None if mesh_shape is None else sharding.make_mesh(mesh_shape)
  whole, _ = assert_same_steps(setup, loss, mesh, micro_batch=4 if mesh is None else 8)
  graphdef, state = setup[:2]
  visual = lambda s: np.asarray(s["visual"]["merger"]["fc2"]["kernel"].get_value())  # noqa: E731
  assert not np.array_equal(visual(state), visual(whole.params))  # the features' gradient reaches it


def test_sft_objective_in_micro_batches(setup):
  """`rl.sft.nll` is additive too: 2 micro-batches equal the whole batch."""
  assert_same_steps(setup, sft.nll, None, micro_batch=8)


def test_micro_batch_must_fit_the_batch_and_the_mesh(setup):
  graphdef, state, batch, r = setup
  model = nnx.merge(graphdef, state)
  with pytest.raises(ValueError, match=r"train.micro_batch=5 must divide the train batch's 16 rows"):
    Learner(model, LossConfig(), OPT, micro_batch=5).step(batch, r)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  with pytest.raises(ValueError, match=r"train.micro_batch=4 must be a multiple of data x fsdp = 8"):
    Learner(nnx.merge(graphdef, state), LossConfig(), OPT, mesh=mesh, micro_batch=4).step(batch, r)
  not_additive = lambda logp, b: (-(logp * b.response_mask).mean(), {})  # noqa: E731
  with pytest.raises(ValueError, match=r"train.micro_batch=4 needs an objective that is a sum over rows"):
    Learner(nnx.merge(graphdef, state), not_additive, OPT, micro_batch=4)
  Learner(nnx.merge(graphdef, state), not_additive, OPT)  # whole batches take any objective


def partitioned_gathers(tiny_ckpt, dtype: str, dump) -> list[tuple[str, int, bool]]:
  """(element type, bytes, in the backward pass) of every all-gather in the train step (fp32
  params) of the tiny model with compute `dtype`, lowered from abstract state on an fsdp=8
  mesh, as the SPMD partitioner emits it. (After it, XLA:CPU computes bf16 in f32 and moves
  the converts before the collectives, so only this stage shows what a TPU or GPU gathers.)"""
  cfg = ModelConfig.from_pretrained(tiny_ckpt).replace(dtype=dtype)
  mesh = sharding.make_mesh({"fsdp": 8})
  state = abstract_train_state(cfg, OPT, mesh)
  shapes = Shapes(
    prompts=4, group=4, rows=16, response_len=8, seq_len=48, images=4, patches=64, prompt_rows=4,
    prompt_len=40, max_new_tokens=8, image_patches=16,
  )  # fmt: skip
  batch = train_batch(cfg, shapes, mesh)
  step = make_train_step(state.graphdef, state.rest, state.optimizer, LossConfig(), micro_batch=8)
  batch_sh = jax.tree.map(lambda x: x.sharding, batch)
  jitted = jit_train_step(
    step, shapes.response_len, mesh, state.param_shardings, state.opt_shardings, batch_sh
  )
  options = {
    "xla_dump_to": str(dump),
    "xla_dump_hlo_pass_re": "spmd-partitioning",
    "xla_dump_hlo_as_text": True,
  }
  jitted.lower(state.params, state.opt_state, batch).compile(compiler_options=options)
  (hlo,) = [p.read_text() for p in dump.glob("*after_spmd-partitioning*.txt")]
  out = []
  for line in hlo.splitlines():
    if m := re.search(r"= (\w+)\[([\d,]*)\]\S* all-gather\(", line):
      bits = 8 if m[1] == "pred" else int(re.search(r"\d+$", m[1]).group())
      size = int(np.prod([int(d) for d in m[2].split(",") if d]))
      out.append((m[1], size * bits // 8, "transpose(" in line))
  return out


def test_fsdp_gathers_weights_in_the_compute_dtype(tiny_ckpt, tmp_path):
  """fp32 master weights, bf16 compute: the weights are cast on their shards, so the forward
  pass's all-gathers move bf16, half the bytes of the same step computing in fp32."""
  fp32 = partitioned_gathers(tiny_ckpt, "float32", tmp_path / "fp32")
  bf16 = partitioned_gathers(tiny_ckpt, "bfloat16", tmp_path / "bf16")
  forward = lambda gathers, t: sum(n for dtype, n, back in gathers if dtype == t and not back)  # noqa: E731
  print(
    f"forward all-gather bytes: fp32 compute {forward(fp32, 'f32')}, bf16 compute {forward(bf16, 'bf16')}"
  )
  print(f"all all-gathers: fp32 compute {fp32}\nbf16 compute {bf16}")
  assert forward(fp32, "f32") > 0 and forward(bf16, "f32") == 0
  assert forward(bf16, "bf16") == pytest.approx(forward(fp32, "f32") / 2, rel=0.05)
