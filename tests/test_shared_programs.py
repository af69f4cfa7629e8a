"""Programs compiled once and shared: the vision tower as its own program
(catts_jax.vision_program), once per image-slot shape for every scoring and prefill program and
giving the numbers the tower inside each program gives; and the scorer's and sampler's programs,
shared by every policy of one architecture (two checkpoints of one model compile once)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tiny_hf import random_image

from catts_jax import sampling, scoring, vision_program
from catts_jax.models.qwen2_5_vl import load_hf
from catts_jax.policy import forget_compiled
from catts_jax.processing import Processor
from catts_jax.sampling import Sampler, SamplingConfig
from catts_jax.scoring import ConfidenceConfig, Scorer


def test_one_tower_program_serves_every_scoring_and_prefill_shape(tiny_ckpt):
  processor = Processor(tiny_ckpt)
  model = load_hf(tiny_ckpt)
  image = random_image(np.random.default_rng(0), 56, 56)
  prompt = processor.chat_prompt("How many bars?", 1)
  forget_compiled()  # other tests compiled programs of this architecture: start from none
  scorer, sampler = Scorer(model), Sampler(model)
  before = vision_program.traces
  for rows, length in ((1, 3), (2, 3), (4, 20)):  # three scoring programs, one slot shape
    sb = processor.scoring_batch([prompt] * rows, [list(range(5, 5 + length))] * rows, [[image]] * rows)
    scorer(sb)
  assert scorer.compilations == 3 and vision_program.traces - before == 1
  sampler(
    processor([prompt], [[image]]), SamplingConfig(max_new_tokens=2, temperature=0.0), jax.random.key(0)
  )
  # A second policy of the same architecture (another checkpoint's weights) reuses it too.
  Scorer(load_hf(tiny_ckpt))(processor.scoring_batch([prompt], [[5, 6, 7]], [[image]]))
  assert vision_program.traces - before == 1
  # A new slot shape (a larger image) is one more.
  scorer(processor.scoring_batch([prompt], [[5, 6, 7]], [[random_image(np.random.default_rng(1), 224, 224)]]))
  assert vision_program.traces - before == 2


def test_features_equal_the_tower_inside_the_program(tiny_ckpt):
  """The scorer's and the prefill's inputs carry the features the model computes from the
  pixels inside one program, and the logits are the same."""
  processor = Processor(tiny_ckpt)
  model = load_hf(tiny_ckpt)
  rng = np.random.default_rng(2)
  images = [[random_image(rng, 56, 84)], [random_image(rng, 84, 56)]]
  batch = processor([processor.chat_prompt("What is shown?", 1)] * 2, images)
  inputs = {k: jnp.asarray(v) for k, v in batch.model_inputs().items()}
  graphdef, state = nnx.split(model)
  split = vision_program.with_features(model.cfg, graphdef, state, inputs)
  assert "pixel_values" not in split and split["image_features"].dtype == model.cfg.compute_dtype
  # The shape plans and layouts are derived from (without running the tower) is the real one.
  shape = vision_program.features_shape(model.cfg, inputs)
  assert (shape.shape, shape.dtype) == (split["image_features"].shape, split["image_features"].dtype)
  want = nnx.jit(lambda m, x: m.image_features(x["pixel_values"], x["patch_pos"], x["patch_image"]))(
    model, inputs
  )
  np.testing.assert_array_equal(np.asarray(split["image_features"]), np.asarray(want))
  whole = nnx.jit(lambda m, x: m(**x)[0])(model, inputs)
  parts = nnx.jit(lambda m, x: m.logits(m.hidden_states(**x)[0]))(model, split)
  np.testing.assert_allclose(np.asarray(parts), np.asarray(whole), rtol=0, atol=1e-5)
  assert vision_program.with_features(
    model.cfg, graphdef, state, {"input_ids": inputs["input_ids"]}
  ).keys() == {"input_ids"}


def test_policies_of_one_architecture_share_their_programs(tiny_ckpt, tiny_tied_ckpt):
  """A second checkpoint of the same architecture (other weights) scores and samples with the
  first one's programs, compiling nothing, and gets what programs compiled for it alone give:
  the weights are the programs' arguments, not constants in them."""
  processor = Processor(tiny_ckpt)
  first, second = load_hf(tiny_ckpt), load_hf(tiny_ckpt)
  nnx.update(second, jax.tree.map(lambda x: x * 1.25, nnx.state(second, nnx.Param)))
  image = random_image(np.random.default_rng(4), 56, 56)
  prompt = processor.chat_prompt("How many bars?", 1)
  sb = processor.scoring_batch([prompt] * 2, [[5, 6, 7], [8, 9]], [[image]] * 2)
  batch = processor([prompt], [[image]])
  confidence = ConfidenceConfig(top_k=9)  # settings no other test uses: these programs are new
  sample = SamplingConfig(max_new_tokens=6, temperature=0.0)

  def run(model):
    scorer, sampler = Scorer(model, confidence), Sampler(model)
    return scorer, sampler, scorer(sb)["nmlp"], sampler(batch, sample, jax.random.key(0)).logprobs

  scorer_1, sampler_1, nmlp_1, logprobs_1 = run(first)
  compiled = scorer_1.compilations, sampler_1.compilations
  scorer_2, sampler_2, nmlp_2, logprobs_2 = run(second)
  assert scorer_2.programs is scorer_1.programs and sampler_2.programs is sampler_1.programs
  assert (scorer_2.compilations, sampler_2.compilations) == compiled  # nothing compiled again
  assert np.abs(nmlp_2 - nmlp_1).min() > 1e-3 and np.abs(logprobs_2 - logprobs_1).max() > 1e-3
  scoring.programs.cache_clear()
  sampling.programs.cache_clear()
  scorer_alone, sampler_alone, nmlp_alone, logprobs_alone = run(second)  # compiled afresh
  assert scorer_alone.programs is not scorer_1.programs and scorer_alone.compilations > 0
  np.testing.assert_array_equal(nmlp_2, nmlp_alone)
  np.testing.assert_array_equal(logprobs_2, logprobs_alone)
  # Another architecture (tied embeddings) has programs of its own.
  assert Scorer(load_hf(tiny_tied_ckpt), confidence).programs is not scorer_alone.programs
