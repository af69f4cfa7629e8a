"""A CDRL rollout on the tiny checkpoint: aligned log-probs, rewards, filtering, a train step."""

import io

import jax
import numpy as np
import pytest
from PIL import Image
from tiny_hf import random_image

from catts_jax.data.schema import from_record, make_example
from catts_jax.models.qwen2_5_vl import load_hf
from catts_jax.policy import Policy
from catts_jax.processing import MODEL_INPUT_KEYS
from catts_jax.rl.grpo import LossConfig
from catts_jax.rl.learner import Learner, OptimizerConfig, response_logprobs
from catts_jax.rl.rollout import RolloutConfig, rollout


def png(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
  rng = np.random.default_rng(0)
  examples = [
    from_record(
      make_example(
        id=f"p{i}",
        benchmark="mathvision",
        question=f"<image1> How many shapes? ({i})",
        answer=str(i),
        images=[png(random_image(rng, 84 + 14 * i, 70))],
      )
    )
    for i in range(3)
  ]
  return Policy.from_pretrained(tiny_ckpt), examples


def test_rollout_batch_is_consistent_and_trains(setup):
  policy, examples = setup
  cfg = RolloutConfig(group_size=4, max_new_tokens=6, strength=1.0, dynamic_filter=False)
  batch, r, metrics = rollout(
    policy, examples, "mathvision", cfg, jax.random.key(0), ref_state=policy.scorer.state
  )
  n = 3 * 4
  assert batch["input_ids"].shape[0] >= n and metrics["groups"] == 3
  mask = batch["response_mask"].astype(bool)
  assert mask[:n].sum(1).min() >= 1 and not mask[n:].any()
  # The sampler's recorded log-probs are the teacher-forced ones of the same tokens.
  inputs = {k: jax.numpy.asarray(batch[k]) for k in MODEL_INPUT_KEYS}
  logp = np.asarray(response_logprobs(policy.model, inputs, r))
  np.testing.assert_allclose(batch["old_logp"][mask], logp[mask], atol=1e-4)
  np.testing.assert_allclose(batch["ref_logp"][mask], logp[mask], atol=1e-4)
  # Rewards: the tiny random model never states an answer, so accuracy is 0 and calibration
  # the worst value (-1) for every sample; advantages are normalised per group.
  assert metrics["reward_accuracy"] == 0
  assert metrics["reward_calibration"] == -1.0
  adv = batch["advantages"][:n].reshape(3, 4)
  np.testing.assert_allclose(adv.mean(1), 0, atol=1e-5)
  assert metrics["confidence"] != metrics["confidence_perturbed"]
  learner = Learner(
    load_hf(policy.processor.path), LossConfig(kl_coef=0.01), OptimizerConfig(learning_rate=1e-3)
  )
  before = learner.step(batch, r)["loss"]
  after = learner.step(batch, r)["loss"]
  assert np.isfinite(before) and after != before


def test_dynamic_filter_drops_zero_variance_groups(setup):
  policy, examples = setup
  cfg = RolloutConfig(group_size=3, max_new_tokens=4, reward_weights={"accuracy": 1.0}, dynamic_filter=True)
  batch, _, metrics = rollout(policy, examples, "mathvision", cfg, jax.random.key(1))
  assert batch is None and metrics["kept_groups"] == 0  # all-zero accuracy rewards: no signal
