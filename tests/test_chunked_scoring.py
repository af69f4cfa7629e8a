"""Chunked and sharded teacher-forced scoring: the LM head runs `logits_chunk` positions at a
time with the same scores and gradients as full logits, its compiled memory does not grow
with vocab x length, and the sharded scorer equals one device with 1/8 of the work each."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tiny_hf import random_image

from catts_jax import sharding
from catts_jax.models.qwen2_5_vl import Qwen2_5_VL, load_hf, presets
from catts_jax.models.qwen2_5_vl.config import ModelConfig, TextConfig, VisionConfig
from catts_jax.processing import Processor
from catts_jax.rl.learner import response_logprobs
from catts_jax.scoring import ConfidenceConfig, Scorer, response_scores
from catts_jax.verify import make_cases

CFG = ConfidenceConfig(top_k=4, tail=5, window=6)
CHUNKS = [0, 5, 4096]  # all at once; 5 does not divide the response length; one chunk > R


@pytest.fixture(scope="module")
def case(tiny_ckpt):
  processor = Processor(tiny_ckpt)
  prompts, images = make_cases(processor)["padded_batch"]
  responses = [
    processor.tokenize("There are 12 red shapes, so the answer is 24."),
    processor.tokenize("Both images"),
    processor.tokenize("x = 5 because 3 times 5 plus 7 is 22; the second image has three more lines."),
  ]
  sb = processor.scoring_batch(prompts, responses, images)
  assert sb.response_len % 5, sb.response_len
  return processor, sb


def chunked_model(path, chunk: int):
  return load_hf(path, ModelConfig.from_pretrained(path).replace(logits_chunk=chunk))


def full_logprobs(model, inputs, response_len):
  """Reference: log_softmax of the model's full logits [B, T, V] before each response token."""
  logits, _ = model(**inputs)
  logp = jax.nn.log_softmax(logits[:, -response_len - 1 : -1].astype(jnp.float32), -1)
  targets = inputs["input_ids"][:, -response_len:]
  return jnp.take_along_axis(logp, targets[..., None], -1)[..., 0], logp


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_scores_equal_full_logits(tiny_ckpt, case, chunk):
  _, sb = case
  model = chunked_model(tiny_ckpt, chunk)
  inputs = {k: jnp.asarray(v) for k, v in sb.batch.model_inputs().items()}
  token_logp, logp = full_logprobs(model, inputs, sb.response_len)
  want = response_scores(token_logp, jax.lax.top_k(logp, CFG.top_k)[0], sb.response_mask, CFG)
  got = Scorer(model, CFG)(sb)
  n = sb.batch.num_rows
  for name, value in want.items():
    np.testing.assert_allclose(got[name], np.asarray(value)[:n], atol=1e-5, rtol=0, err_msg=name)


def test_chunked_logprobs_and_gradient_equal_full_logits(tiny_ckpt, case):
  """The learner's chunked, rematerialised log-probs and their gradient w.r.t. every param
  equal those of full logits (text-only rows: the chunking is all in the LM head)."""
  processor, _ = case
  prompts = [processor.chat_prompt("Count the red shapes."), processor.chat_prompt("Name the two images.")]
  responses = [
    processor.tokenize("There are 12 red shapes, so the answer is 24."),
    processor.tokenize("Both"),
  ]
  sb = processor.scoring_batch(prompts, responses)
  assert sb.response_len % 5, sb.response_len
  inputs = {k: jnp.asarray(v) for k, v in sb.batch.model_inputs().items()}
  r = sb.response_len
  weights = jnp.asarray(np.random.default_rng(0).normal(size=(sb.batch.input_ids.shape[0], r)), jnp.float32)

  def value_and_grad(model, fn):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss = lambda p: (fn(nnx.merge(graphdef, p, rest)) * weights).sum()  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(params)

  want_value, want_grad = value_and_grad(
    chunked_model(tiny_ckpt, 0), lambda m: full_logprobs(m, inputs, r)[0]
  )
  model = chunked_model(tiny_ckpt, 5)
  np.testing.assert_allclose(
    response_logprobs(model, inputs, r), full_logprobs(model, inputs, r)[0], atol=1e-5, rtol=0
  )
  value, grad = value_and_grad(model, lambda m: response_logprobs(m, inputs, r))
  assert abs(float(value - want_value)) <= 1e-5 * max(1.0, abs(float(want_value)))
  for (path, g), w in zip(jax.tree.leaves_with_path(grad), jax.tree.leaves(want_grad)):
    scale = max(1.0, float(jnp.abs(w).max()))
    np.testing.assert_allclose(g, w, atol=1e-5 * scale, rtol=0, err_msg=f"{jax.tree_util.keystr(path)}")


# --- compiled memory ---------------------------------------------------------------------


def test_resolve_carries_logits_chunk():
  assert presets.resolve({"preset": "small"}).logits_chunk == ModelConfig().logits_chunk == 512
  assert presets.resolve({"preset": "small", "logits_chunk": 7}).logits_chunk == 7


def _abstract_model(vocab: int, chunk: int):
  """One text layer, hidden 64: the LM head's logits dominate the scoring memory."""
  text = TextConfig(
    vocab_size=vocab,
    hidden_size=64,
    intermediate_size=128,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    mrope_section=(4, 6, 6),
  )
  vision = VisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
  cfg = ModelConfig(text=text, vision=vision, logits_chunk=chunk)
  return nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))


def _temp_bytes(vocab: int, response_len: int, chunk: int) -> tuple[int, int]:
  """Compiled temp bytes of the scorer and of the learner's log-prob gradient, text only."""
  model = _abstract_model(vocab, chunk)
  rows, t = 2, response_len + 8
  sds = jax.ShapeDtypeStruct
  inputs = {
    "input_ids": sds((rows, t), jnp.int32),
    "positions": sds((3, rows, t), jnp.int32),
    "attention_mask": sds((rows, t), jnp.int32),
  }
  mask = sds((rows, response_len), jnp.int32)
  scorer = Scorer(model, CFG)
  score = scorer.lower(scorer.state, inputs, mask, response_len).compile()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss = lambda p, x: response_logprobs(nnx.merge(graphdef, p, rest), x, response_len).sum()  # noqa: E731
  grad = jax.jit(jax.grad(loss)).lower(params, inputs).compile()
  return score.memory_analysis().temp_size_in_bytes, grad.memory_analysis().temp_size_in_bytes


def test_chunked_temp_memory_does_not_grow_with_vocab_times_length():
  """Vocab and response length x4 each (logits x16): the unchunked temp grows by at least the
  float32 [rows, R, V] logits, the chunked one (whose buffers grow with V only) by a quarter
  of the unchunked growth at most, for scoring and for the gradient."""
  small, large = (2048, 64), (8192, 256)
  full = np.subtract(_temp_bytes(*large, 0), _temp_bytes(*small, 0))
  chunked = np.subtract(_temp_bytes(*large, 16), _temp_bytes(*small, 16))
  logits_growth = 2 * (large[0] * large[1] - small[0] * small[1]) * 4
  print("temp growth (score, grad): full", full, "chunked", chunked, "logits", logits_growth)
  assert np.all(full >= logits_growth), full
  assert np.all(4 * chunked <= full), (chunked, full)


# --- sharded scorer ----------------------------------------------------------------------

MESHES = [{"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 8}]


@pytest.fixture(scope="module")
def rows16(tiny_ckpt):
  """16 rows, half with an image, responses of several lengths."""
  processor = Processor(tiny_ckpt)
  rng = np.random.default_rng(1)
  prompts = [processor.chat_prompt(f"question {i} " * (1 + i % 3), i % 2) for i in range(16)]
  images = [[random_image(rng, 56 + 28 * (i % 3), 56)] if i % 2 else [] for i in range(16)]
  responses = [processor.tokenize("the answer is " + "seven " * (1 + i % 5)) for i in range(16)]
  sb = processor.scoring_batch(prompts, responses, images)
  assert sb.batch.input_ids.shape[0] == 16
  return sb


def _compiled(scorer, sb, mesh=None):
  """The compiled scoring step, arguments laid out as the scorer lays them out."""
  values = {**sb.batch.model_inputs(), "response_mask": sb.response_mask}
  shardings = sharding.input_shardings(values, mesh) if mesh is not None else {k: None for k in values}
  values = {
    k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=shardings[k])
    for k, v in values.items()
  }
  mask = values.pop("response_mask")
  return scorer.lower(scorer.state, values, mask, sb.response_len).compile()


@pytest.mark.parametrize("shape", MESHES, ids=["data2_fsdp2_tensor2", "fsdp8"])
def test_sharded_scorer_equals_one_device(tiny_ckpt, rows16, shape):
  mesh = sharding.make_mesh(shape)
  single = Scorer(chunked_model(tiny_ckpt, 5), CFG)
  scorer = Scorer(sharding.shard_model(chunked_model(tiny_ckpt, 5), mesh), CFG, mesh=mesh)
  want, got = single(rows16), scorer(rows16)
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0, err_msg=name)
  compiled = _compiled(scorer, rows16, mesh)
  rows = NamedSharding(mesh, P(tuple(a for a in ("data", "fsdp") if a in shape)))
  for name, s in compiled.output_shardings.items():  # [B, R] token fields, [B] the rest
    assert s.is_equivalent_to(rows, 2 if name.startswith("token_") else 1), name
  ratio = compiled.cost_analysis()["flops"] / (_compiled(single, rows16).cost_analysis()["flops"] / 8)
  print("per-device flops / (one device / 8):", shape, ratio)
  assert ratio <= 1.3, ratio
