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
from catts_jax.rl.grpo import LossConfig
from catts_jax.rl.learner import Learner, OptimizerConfig, response_logprobs
from catts_jax.rl.rollout import RolloutConfig, perturb_images, rollout


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
  assert batch.input_ids.shape[0] >= n and metrics["groups"] == 3
  mask = batch.response_mask.astype(bool)
  assert mask[:n].sum(1).min() >= 1 and not mask[n:].any()
  # The sampler's recorded log-probs are the teacher-forced ones of the same tokens.
  inputs = {k: jax.numpy.asarray(v) for k, v in batch.model_inputs().items()}
  logp = np.asarray(response_logprobs(policy.model, inputs, r))
  np.testing.assert_allclose(batch.old_logp[mask], logp[mask], atol=1e-4)
  np.testing.assert_allclose(batch.ref_logp[mask], logp[mask], atol=1e-4)
  # Rewards: the tiny random model never states an answer, so accuracy is 0 and calibration
  # the worst value (-1) for every sample; advantages are normalised per group.
  assert metrics["reward_accuracy"] == 0
  assert metrics["reward_calibration"] == -1.0
  adv = batch.advantages[:n].reshape(3, 4)
  np.testing.assert_allclose(adv.mean(1), 0, atol=1e-5)
  # conf(y|x) and conf(y|x_noisy) by value: the same responses scored again under the
  # original and under the perturbed images (the same seeds), and the two differ.
  prompts = perturb_images(policy, examples, cfg, seed=0)
  tokens = [np.asarray(batch.input_ids)[i, -r:][mask[i]] for i in range(n)]  # responses: the last r
  rows = [p for p in prompts.prompts for _ in range(4)]
  clean = policy.score(rows, tokens, [x for x in prompts.originals for _ in range(4)])["confidence"]
  noisy = policy.score(rows, tokens, [x for x in prompts.perturbed for _ in range(4)])["confidence"]
  assert metrics["confidence"] == pytest.approx(float(np.mean(clean)), abs=1e-5)
  assert metrics["confidence_perturbed"] == pytest.approx(float(np.mean(noisy)), abs=1e-5)
  assert abs(np.mean(clean) - np.mean(noisy)) > 1e-4
  learner = Learner(
    load_hf(policy.processor.path), LossConfig(kl_coef=0.01), OptimizerConfig(learning_rate=1e-3)
  )
  before = learner.step(batch, r)["loss"]
  after = learner.step(batch, r)["loss"]
  assert np.isfinite(before) and after < before  # a step on this batch lowers its loss


def test_dynamic_filter_drops_zero_variance_groups(setup):
  policy, examples = setup
  cfg = RolloutConfig(group_size=3, max_new_tokens=4, reward_weights={"accuracy": 1.0}, dynamic_filter=True)
  batch, _, metrics = rollout(policy, examples, "mathvision", cfg, jax.random.key(1))
  assert batch is None and metrics["kept_groups"] == 0  # all-zero accuracy rewards: no signal


def test_confidence_gradient_adds_the_perturbed_rows(setup):
  """The perturbed copy of each response joins the batch with advantage -w * conf(y|x_noisy)
  and its teacher-forced log-probs as old log-probs, the sampled row gains +w * conf(y|x)
  (the sensitivity reward's own gradient); training on the perturbed rows lowers
  conf(y|x_noisy)."""
  policy, examples = setup
  w = 0.5
  cfg = RolloutConfig(
    group_size=2, max_new_tokens=6, strength=1.0, reward_weights={"sensitivity": w}, confidence_gradient=True
  )
  batch, r, metrics = rollout(
    policy, examples, "mathvision", cfg, jax.random.key(2), ref_state=policy.scorer.state
  )
  n = 3 * 2
  mask = batch.response_mask.astype(bool)
  assert mask[:n].any(1).all() and not mask[2 * n :].any()
  assert (batch.kl_rows[:n] == 1).all() and not batch.kl_rows[n:].any()  # samples only
  np.testing.assert_array_equal(batch.input_ids[:n], batch.input_ids[n : 2 * n])  # same rows...
  assert not np.array_equal(batch.pixel_values[: len(batch.pixel_values) // 2], batch.pixel_values[len(batch.pixel_values) // 2 :])  # ...other pixels  # fmt: skip
  inputs = {k: jax.numpy.asarray(v) for k, v in batch.model_inputs().items()}
  logp = np.asarray(response_logprobs(policy.model, inputs, r))
  np.testing.assert_allclose(batch.old_logp[mask], logp[mask], atol=1e-4)
  np.testing.assert_allclose(batch.ref_logp[:n][mask[:n]], logp[:n][mask[:n]], atol=1e-4)  # ref = policy here
  noisy = slice(n, 2 * n)
  conf_noisy = np.exp((logp[noisy] * mask[noisy]).sum(1) / np.maximum(mask[noisy].sum(1), 1))
  conf = np.exp((logp[:n] * mask[:n]).sum(1) / mask[:n].sum(1))
  active = (conf > conf_noisy) & (conf - conf_noisy < 1)
  expected = np.where(active, -w * conf_noisy, 0.0)
  np.testing.assert_allclose(batch.advantages[noisy], expected, atol=1e-4)
  assert metrics["noisy_rows"] == int(active.sum()) > 0
  # The sampled rows: the group advantage of the reward w * clip(conf - conf_noisy, 0, 1)
  # (GRPO: centred, over the sample std; zero-variance groups dropped) plus the reward's own
  # gradient +w * conf.
  reward = (w * np.clip(conf - conf_noisy, 0, 1)).reshape(3, 2)
  std = reward.std(1, ddof=1, keepdims=True)
  group = np.where(std > 0, (reward - reward.mean(1, keepdims=True)) / (std + 1e-6), 0.0).reshape(-1)
  np.testing.assert_allclose(batch.advantages[:n], group + np.where(active, w * conf, 0.0), atol=1e-3)

  # Only the perturbed rows' term: the originals' advantages (which move the same responses
  # on their clean images) are zeroed here.
  only_noisy = batch.replace(
    advantages=np.concatenate([np.zeros(n), batch.advantages[n:]]).astype(np.float32)
  )
  learner = Learner(load_hf(policy.processor.path), LossConfig(), OptimizerConfig(learning_rate=1e-3))
  for _ in range(3):
    learner.step(only_noisy, r)
  after = np.asarray(response_logprobs(learner.model(), inputs, r))
  rows = expected != 0
  before_sum = (logp[noisy] * mask[noisy]).sum(1)[rows]
  after_sum = (after[noisy] * mask[noisy]).sum(1)[rows]
  assert (after_sum < before_sum).all(), (before_sum, after_sum)


def test_reference_solutions_join_the_batch_and_train(setup):
  """With `solutions`, each trained problem's reference solution (+ <|im_end|>) follows the
  samples and their perturbed copies: marked by sft_rows, zero advantage, out of the KL.
  Training on the NLL term raises their log-likelihood. A problem without one is named."""
  policy, examples = setup
  solved = [
    {**ex, "metadata": {"solution": f"There are {i} shapes. The answer is \\boxed{{{i}}}."}}
    for i, ex in enumerate(examples)
  ]
  cfg = RolloutConfig(
    group_size=2,
    max_new_tokens=6,
    strength=1.0,
    reward_weights={"sensitivity": 0.5},
    confidence_gradient=True,
    dynamic_filter=False,
  )
  key = jax.random.key(2)
  batch, r, _ = rollout(
    policy, solved, "mathvision", cfg, key, ref_state=policy.scorer.state, solutions=True, train_groups=2
  )
  n = 2 * 2  # the two trained groups' samples; rows [n, 2n) are their perturbed copies
  rows = [2 * n, 2 * n + 1]
  np.testing.assert_array_equal(np.flatnonzero(batch.sft_rows), rows)
  mask = batch.response_mask.astype(bool)
  for row, ex in zip(rows, solved[:2]):
    want = policy.solution_tokens(ex)
    assert want[-1] == policy.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert mask[row].sum() == len(want)
    np.testing.assert_array_equal(batch.input_ids[row, -len(want) :], want)
  assert not batch.advantages[rows].any() and not batch.kl_rows[rows].any()
  assert batch.kl_rows[:n].all() and not mask[2 * n + 2 :].any()

  learner = Learner(
    load_hf(policy.processor.path),
    LossConfig(kl_coef=0.01, sft_coef=1.0),
    OptimizerConfig(learning_rate=1e-3),
  )
  nll = [learner.step(batch, r)["sft_nll"] for _ in range(3)]
  assert nll[2] < nll[0], nll
  with pytest.raises(ValueError, match="p0: no metadata.solution"):
    rollout(policy, examples, "mathvision", cfg, key, solutions=True)


def test_without_confidence_gradient_the_batch_holds_the_originals_only(setup):
  policy, examples = setup
  cfg = RolloutConfig(group_size=2, max_new_tokens=6, strength=1.0, dynamic_filter=False)
  batch, _, metrics = rollout(policy, examples, "mathvision", cfg, jax.random.key(2))
  assert "noisy_rows" not in metrics and batch.response_mask[6:].sum() == 0


def test_refill_trains_on_informative_groups_first(setup, monkeypatch):
  """DAPO refill: from 3 sampled groups, group 0 (all rewards equal) gives way to groups 1, 2."""
  from catts_jax.rl import rollout as rollout_module

  def fake_compute(weights, prompts, completions, **fields):
    total = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0], np.float32)
    return total, {"accuracy": total}

  monkeypatch.setattr(rollout_module.rewards, "compute", fake_compute)
  policy, examples = setup
  cfg = RolloutConfig(group_size=2, max_new_tokens=4, advantage="dr_grpo", dynamic_filter=True)
  batch, _, metrics = rollout(policy, examples, "mathvision", cfg, jax.random.key(3), train_groups=2)
  assert metrics["groups"] == 3 and metrics["informative_groups"] == 2 and metrics["kept_groups"] == 2
  np.testing.assert_allclose(batch.advantages[:4], [-0.5, 0.5, 0.5, -0.5])
  assert batch.response_mask[:4].any(1).all() and not batch.response_mask[4:].any()

  batch, _, metrics = rollout(policy, examples, "mathvision", cfg, jax.random.key(3), train_groups=3)
  assert metrics["kept_groups"] == 2  # too few informative groups: the rest are masked
  np.testing.assert_allclose(batch.advantages[:6], [-0.5, 0.5, 0.5, -0.5, 0, 0])
  assert batch.response_mask[:4].any(1).all() and not batch.response_mask[4:].any()


def test_answer_mask_marks_the_last_boxed_answer(tiny_ckpt):
  from transformers import AutoTokenizer

  from catts_jax.rl.rollout import answer_mask

  tok = AutoTokenizer.from_pretrained(tiny_ckpt)
  ids = tok("So 3 + 4 = 7. The answer is \\boxed{7}, not \\boxed{12}.")["input_ids"]
  mask = answer_mask(tok, ids)
  picked = tok.decode([t for t, m in zip(ids, mask) if m])
  assert "12" in picked and "7" not in picked and "answer" not in picked
  assert answer_mask(tok, tok("no final answer")["input_ids"]).all()


def test_calibration_on_the_answer_span(setup, monkeypatch):
  """calibration_span="answer": the calibration reward judges exp(mean log-prob) of the
  answer's tokens, and its gradient (confidence_gradient) is a per-token advantage on those
  tokens only, d R / d conf_answer * conf_answer * length / answer tokens; the row advantages
  keep the group term alone."""
  from catts_jax.rl import rewards
  from catts_jax.rl import rollout as rollout_module

  policy, examples = setup
  w = 0.5
  # Every response "answers"; the first two groups right, the third wrong; the last two
  # tokens are the answer.
  monkeypatch.setattr(
    rewards,
    "grade",
    lambda texts, exs, benchmark=None: (
      np.array([float(e["id"] != "p2") for e in exs], np.float32),
      np.ones(len(texts), bool),
    ),
  )
  monkeypatch.setattr(
    rollout_module, "answer_mask", lambda tok, tokens: np.arange(len(tokens)) >= len(tokens) - 2
  )
  cfg = RolloutConfig(
    group_size=2,
    max_new_tokens=6,
    reward_weights={"calibration": w},
    calibration_span="answer",
    confidence_gradient=True,
    dynamic_filter=False,
  )
  batch, r, metrics = rollout(policy, examples, "mathvision", cfg, jax.random.key(3))
  n = 3 * 2
  mask = batch.response_mask[:n].astype(bool)
  old = batch.old_logp[:n]
  length = mask.sum(1)
  assert (length >= 2).all()
  span = np.zeros_like(mask)
  span[:, -2:] = True  # right-aligned: a row's last two response tokens
  conf_answer = np.exp((old * span).sum(1) / 2)
  sign = np.where(np.repeat([1.0, 1.0, -1.0], 2) > 0, 1.0, -1.0)
  assert metrics["reward_calibration"] == pytest.approx(float((sign * conf_answer).mean()), rel=1e-4)
  want = np.where(span, (w * sign * conf_answer * length / 2)[:, None], 0.0)
  np.testing.assert_allclose(batch.token_advantages[:n], want, rtol=1e-4, atol=1e-6)
  assert not batch.token_advantages[n:].any()
  reward = (w * sign * conf_answer).reshape(3, 2)
  std = reward.std(1, ddof=1, keepdims=True)
  group = np.where(std > 0, (reward - reward.mean(1, keepdims=True)) / (std + 1e-6), 0.0)
  np.testing.assert_allclose(batch.advantages[:n], group.reshape(-1), atol=1e-3)


@pytest.mark.parametrize("field", [{"temperature": 0.7}, {"top_p": 0.9}])
def test_rollouts_sample_the_policy_the_learner_scores(field):
  with pytest.raises(ValueError, match="temperature-1 policy"):
    RolloutConfig(**field)
  RolloutConfig(temperature=1.0, top_p=1.0)


def test_micro_batched_rollout_equals_one_call(setup):
  """Scoring in micro-batches of G rows gives the same batch as one call (the perturbed
  confidences, the reference log-probs); sampling in micro-batches draws each call's tokens
  with its own key, and the batch stays consistent with them."""
  policy, examples = setup
  base = dict(group_size=4, max_new_tokens=6, strength=1.0, dynamic_filter=False)
  key, ref = jax.random.key(0), policy.scorer.state
  whole, r, m = rollout(policy, examples, "mathvision", RolloutConfig(**base), key, ref_state=ref)
  parts, r2, m2 = rollout(
    policy, examples, "mathvision", RolloutConfig(**base, score_micro_batch=4), key, ref_state=ref
  )
  assert r2 == r and m2["confidence_perturbed"] == pytest.approx(m["confidence_perturbed"], abs=1e-6)
  np.testing.assert_allclose(parts.ref_logp, whole.ref_logp, atol=1e-5)
  np.testing.assert_array_equal(parts.input_ids, whole.input_ids)
  sampled, r3, _ = rollout(
    policy, examples, "mathvision", RolloutConfig(**base, sample_micro_batch=8), key, ref_state=ref
  )
  mask = sampled.response_mask.astype(bool)
  inputs = {k: jax.numpy.asarray(v) for k, v in sampled.model_inputs().items()}
  logp = np.asarray(response_logprobs(policy.model, inputs, r3))
  np.testing.assert_allclose(sampled.old_logp[mask], logp[mask], atol=1e-4)
  with pytest.raises(ValueError, match="multiple of group_size"):
    RolloutConfig(**base, score_micro_batch=6)
