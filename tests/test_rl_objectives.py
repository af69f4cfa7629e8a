"""CDRL rewards and GRPO-family objectives against hand computations and numpy references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catts_jax.data.schema import make_example
from catts_jax.rl import grpo, rewards

jax.config.update("jax_enable_x64", False)


# --- rewards -------------------------------------------------------------------------------


def test_rewards_hand_values():
  conf = np.array([0.9, 0.8, 0.3, 0.6])
  noisy = np.array([0.2, 0.85, 0.1, 0.6])
  correct = np.array([1, 0, 1, 0])
  f = dict(confidence=conf, confidence_perturbed=noisy, correct=correct, examples=[None] * 4)
  np.testing.assert_allclose(rewards.perceptual_sensitivity([], [], **f), [0.7, 0.0, 0.2, 0.0], atol=1e-6)
  np.testing.assert_allclose(rewards.calibration([], [], **f), [0.9, -0.8, 0.3, -0.6], atol=1e-6)
  np.testing.assert_allclose(
    rewards.calibration([], [], form="brier", **f), [1 - 0.01, 1 - 0.64, 1 - 0.49, 1 - 0.36], atol=1e-6
  )
  responses = ["so \\boxed{12}", "\\boxed{1} or \\boxed{2}", "no box", "\\boxed{ }", "\\boxed{\\frac{1}{2}}"]
  np.testing.assert_array_equal(rewards.format_reward([], responses), [1, 0, 0, 0, 1])
  total, parts = rewards.compute(
    {"accuracy": 1.0, "sensitivity": 0.5, "calibration": 0.25}, [""] * 4, [""] * 4, **f
  )
  np.testing.assert_allclose(
    total, correct + 0.5 * parts["sensitivity"] + 0.25 * parts["calibration"], atol=1e-6
  )
  with pytest.raises(ValueError, match="unknown reward"):
    rewards.compute({"bogus": 1.0}, [], [])


def test_unanswered_responses_get_the_worst_calibration():
  ex = make_example(id="7", benchmark="mathvision", question="How many?", answer="10")
  responses = ["\\boxed{10}", "\\boxed{3}", "qq zz"]  # right, wrong, no answer at all
  conf = np.array([0.9, 0.2, 0.05])
  f = dict(examples=[ex] * 3, benchmark="mathvision", confidence=conf, confidence_perturbed=conf)
  _, parts = rewards.compute({"accuracy": 1.0, "calibration": 1.0}, [""] * 3, responses, **f)
  np.testing.assert_allclose(parts["calibration"], [0.9, -0.2, -1.0], atol=1e-6)
  _, parts = rewards.compute({"calibration": 1.0}, [""] * 3, responses, form="brier", **f)
  np.testing.assert_allclose(parts["calibration"], [1 - 0.01, 1 - 0.04, 0.0], atol=1e-6)


@pytest.mark.parametrize("form", ["signed", "brier"])
def test_confidence_gradients_equal_finite_differences(form):
  """d total / d conf and d total / d conf_noisy of the weighted rewards, against central
  differences of rewards.compute; flat where sensitivity is clipped or no answer is stated."""
  conf = np.array([0.9, 0.8, 0.3, 0.6, 0.7])
  noisy = np.array([0.2, 0.85, 0.1, 0.4, 0.3])
  correct = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
  answered = np.array([True, True, True, True, False])
  weights = {"accuracy": 1.0, "sensitivity": 0.5, "calibration": 0.25}
  fields = dict(examples=[None] * 5, correct=correct, answered=answered, form=form)

  def total(c, n):
    return rewards.compute(weights, [""] * 5, [""] * 5, confidence=c, confidence_perturbed=n, **fields)[0]

  h = 1e-3
  d_sensitivity, d_noisy, d_calibrated = rewards.confidence_gradients(
    weights, confidence=conf, confidence_perturbed=noisy, correct=correct, answered=answered, form=form
  )
  d_clean = d_sensitivity + d_calibrated  # calibration judges conf(y|x) itself here
  for i in range(5):
    e = np.eye(5)[i] * h
    np.testing.assert_allclose(
      d_clean[i], (total(conf + e, noisy) - total(conf - e, noisy))[i] / (2 * h), atol=2e-3
    )
    np.testing.assert_allclose(
      d_noisy[i], (total(conf, noisy + e) - total(conf, noisy - e))[i] / (2 * h), atol=2e-3
    )
  assert d_noisy[1] == 0 and d_noisy[0] == -0.5  # clipped at 0 / live
  none = rewards.confidence_gradients({"accuracy": 1.0}, confidence=conf, confidence_perturbed=noisy,
                                      correct=correct, answered=answered)  # fmt: skip
  assert all(d.tolist() == [0.0] * 5 for d in none)

  # Calibration judging another confidence (the answer's): its gradient is taken there.
  answer = np.array([0.5, 0.95, 0.4, 0.2, 0.6])

  def judged(a):
    return rewards.compute(
      weights,
      [""] * 5,
      [""] * 5,
      confidence=conf,
      confidence_perturbed=noisy,
      calibration_confidence=a,
      **fields,
    )[0]

  d_sens, _, d_answer = rewards.confidence_gradients(
    weights, confidence=conf, confidence_perturbed=noisy, correct=correct, answered=answered, form=form,
    calibration_confidence=answer,
  )  # fmt: skip
  np.testing.assert_array_equal(d_sens, d_sensitivity)
  for i in range(5):
    e = np.eye(5)[i] * h
    np.testing.assert_allclose(d_answer[i], (judged(answer + e) - judged(answer - e))[i] / (2 * h), atol=2e-3)


def test_accuracy_reward_grades_with_the_benchmark_grader():
  ex = make_example(id="7", benchmark="mathvision", question="How many?", answer="10")
  got = rewards.accuracy(
    [], ["The answer is 10.", "The answer is 1.", "\\boxed{10}"], examples=[ex] * 3, benchmark="mathvision"
  )
  np.testing.assert_array_equal(got, [1, 0, 1])


# --- advantages ----------------------------------------------------------------------------


def test_advantages_hand_values():
  r = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
  s = np.sqrt(1 / 3)  # ddof=1 std of [1, 0, 0, 1]
  np.testing.assert_allclose(grpo.advantages("grpo", r)[0], np.array([0.5, -0.5, -0.5, 0.5]) / s, rtol=1e-5)
  np.testing.assert_allclose(grpo.advantages("grpo", r)[1], 0, atol=1e-6)  # zero-variance group
  np.testing.assert_allclose(grpo.advantages("rloo", r)[0], [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)
  np.testing.assert_allclose(grpo.advantages("dr_grpo", r)[0], [0.5, -0.5, -0.5, 0.5], rtol=1e-6)
  with pytest.raises(ValueError, match="unknown advantage"):
    grpo.advantages("ppo", r)


# --- the loss ------------------------------------------------------------------------------


def numpy_loss(logp, old, adv, mask, cfg, ref):
  """Plain loops, float64. adv [b] per row or [b, t] per token."""
  b, t = logp.shape
  token = np.zeros((b, t))
  for i in range(b):
    for j in range(t):
      ratio = np.exp(logp[i, j] - old[i, j])
      a = adv[i, j] if adv.ndim == 2 else adv[i]
      pg = max(-a * ratio, -a * min(max(ratio, 1 - cfg.eps_low), 1 + cfg.eps_high))
      if cfg.dual_clip is not None and a < 0:
        pg = min(pg, -a * cfg.dual_clip)
      if cfg.kl_coef:
        d = ref[i, j] - logp[i, j]
        kl = (np.exp(d) - d - 1) if cfg.kl_estimator == "k3" else -d
        pg += cfg.kl_coef * kl
      token[i, j] = pg
  if cfg.aggregation == "token_mean":
    return (token * mask).sum() / mask.sum()
  if cfg.aggregation == "seq_mean":
    return np.mean([(token[i] * mask[i]).sum() / mask[i].sum() for i in range(b)])
  return np.mean([(token[i] * mask[i]).sum() / cfg.max_tokens for i in range(b)])


CONFIGS = [
  grpo.LossConfig(),
  grpo.LossConfig(aggregation="seq_mean", kl_coef=0.1, kl_estimator="k3"),
  grpo.LossConfig(aggregation="seq_sum", max_tokens=7, kl_coef=0.05, kl_estimator="k1", dual_clip=3.0),
  grpo.LossConfig(eps_low=0.1, eps_high=0.1, dual_clip=1.5),
]


@pytest.mark.parametrize(
  "cfg", CONFIGS, ids=lambda c: f"{c.aggregation}-kl{c.kl_coef}-{c.kl_estimator}-dual{c.dual_clip}"
)
def test_loss_and_gradient_equal_numpy(cfg):
  rng = np.random.default_rng(0)
  b, t = 5, 7
  old = -rng.exponential(1.0, (b, t))
  logp = old + rng.normal(0, 0.4, (b, t))  # ratios both inside and outside the clip range
  ref = old + rng.normal(0, 0.3, (b, t))
  adv = np.array([1.5, -2.0, 0.3, -0.7, 0.0])
  mask = (np.arange(t)[None] < np.array([7, 5, 3, 6, 1])[:, None]).astype(np.float64)

  def loss_of(lp):
    return grpo.policy_loss(
      lp,
      cfg,
      old_logp=jnp.asarray(old, jnp.float32),
      advantages=jnp.asarray(adv, jnp.float32),
      response_mask=jnp.asarray(mask, jnp.float32),
      ref_logp=jnp.asarray(ref, jnp.float32),
    )[0]

  got = float(loss_of(jnp.asarray(logp, jnp.float32)))
  want = numpy_loss(logp, old, adv, mask, cfg, ref)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-6)

  grad = np.asarray(jax.grad(loss_of)(jnp.asarray(logp, jnp.float32)))
  h = 1e-6
  numeric = np.zeros_like(logp)
  for i in range(b):
    for j in range(t):
      up, down = logp.copy(), logp.copy()
      up[i, j] += h
      down[i, j] -= h
      numeric[i, j] = (
        numpy_loss(up, old, adv, mask, cfg, ref) - numpy_loss(down, old, adv, mask, cfg, ref)
      ) / (2 * h)
  np.testing.assert_allclose(grad, numeric, atol=2e-5)
  assert (grad[mask == 0] == 0).all()


def test_token_advantages_add_to_the_row_advantages():
  """Per-token advantages (a reward gradient on some tokens only) enter the clipped objective
  token by token, added to the row's advantage; numpy reference, dual clip and KL on."""
  rng = np.random.default_rng(2)
  b, t = 4, 6
  old = -rng.exponential(1.0, (b, t))
  logp = old + rng.normal(0, 0.4, (b, t))
  ref = old + rng.normal(0, 0.3, (b, t))
  adv = np.array([1.0, -0.5, 0.0, 0.25])
  tokens = np.where(rng.random((b, t)) < 0.3, rng.normal(0, 2.0, (b, t)), 0.0)
  mask = (np.arange(t)[None] < np.array([6, 4, 2, 5])[:, None]).astype(np.float64)
  cfg = grpo.LossConfig(kl_coef=0.05, dual_clip=3.0)
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  got, _ = grpo.policy_loss(
    f32(logp),
    cfg,
    old_logp=f32(old),
    advantages=f32(adv),
    response_mask=f32(mask),
    ref_logp=f32(ref),
    token_advantages=f32(tokens),
  )
  want = numpy_loss(logp, old, adv[:, None] + tokens, mask, cfg, ref)
  assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)
  assert want != pytest.approx(numpy_loss(logp, old, adv, mask, cfg, ref), rel=1e-3)


def test_clip_fraction_and_kl_metrics():
  logp = jnp.log(jnp.array([[1.5, 1.0, 0.5]]))
  old = jnp.zeros((1, 3))
  fields = dict(old_logp=old, advantages=jnp.array([1.0]), response_mask=jnp.ones((1, 3)))
  _, m = grpo.policy_loss(logp, grpo.LossConfig(kl_coef=0.1), ref_logp=old, **fields)
  # A > 0: ratio 1.5 is clipped at 1.28; 0.5 is not (min picks the unclipped, smaller objective).
  assert float(m["clip_fraction"]) == pytest.approx(1 / 3)
  k3 = np.exp(-np.log([1.5, 1.0, 0.5])) + np.log([1.5, 1.0, 0.5]) - 1
  assert float(m["kl"]) == pytest.approx(k3.mean(), rel=1e-5)
  with pytest.raises(ValueError, match="needs ref_logp"):
    grpo.policy_loss(logp, grpo.LossConfig(kl_coef=0.1), **fields)
  cfg = dataclasses.replace(grpo.LossConfig(), aggregation="seq_sum")
  with pytest.raises(ValueError, match="max_tokens"):
    grpo.policy_loss(logp, cfg, **fields)


def test_kl_rows_leave_rows_out_of_the_kl_term():
  """A row with kl_rows 0 contributes its policy term but no KL: as if its reference were the
  policy itself (k3 = 0 there); the kl metric averages the other rows only."""
  rng = np.random.default_rng(1)
  old = jnp.asarray(-rng.exponential(1.0, (3, 4)), jnp.float32)
  logp = old + jnp.asarray(rng.normal(0, 0.3, (3, 4)), jnp.float32)
  ref = old + jnp.asarray(rng.normal(0, 0.3, (3, 4)), jnp.float32)
  adv, mask = jnp.array([1.0, -0.5, 0.7]), jnp.ones((3, 4))
  cfg = grpo.LossConfig(kl_coef=0.1)
  rows = jnp.array([1.0, 0.0, 1.0])
  fields = dict(old_logp=old, advantages=adv, response_mask=mask)
  loss, m = grpo.policy_loss(logp, cfg, ref_logp=ref, kl_rows=rows, **fields)
  ref_without_row_1 = ref.at[1].set(logp[1])
  want, m_all = grpo.policy_loss(logp, cfg, ref_logp=ref_without_row_1, **fields)
  assert float(loss) == pytest.approx(float(want), rel=1e-6)
  assert float(m["kl"]) == pytest.approx(float(m_all["kl"]) * 3 / 2, rel=1e-5)


def test_solution_rows_join_only_the_nll_term():
  """Rows marked by sft_rows add sft_coef x their token-mean NLL and nothing else: their
  advantage and reference are ignored, and a reference of padding (0, where k3 would
  overflow on these rows' log-probs) leaves loss and gradient finite."""
  rng = np.random.default_rng(2)
  old = jnp.asarray(-rng.exponential(1.0, (4, 5)), jnp.float32)
  logp = old + jnp.asarray(rng.normal(0, 0.3, (4, 5)), jnp.float32)
  logp = logp.at[2:].set(-100.0 + logp[2:])  # exp(0 - logp) overflows float32
  ref = (old + jnp.asarray(rng.normal(0, 0.3, (4, 5)), jnp.float32)).at[2:].set(0.0)
  adv = jnp.array([1.0, -0.5, 2.0, 3.0])
  mask = jnp.ones((4, 5)).at[3, :2].set(0.0)
  sft_rows = jnp.array([0.0, 0.0, 1.0, 1.0])
  cfg = grpo.LossConfig(kl_coef=0.1, sft_coef=0.5)

  def loss(logp):
    return grpo.policy_loss(
      logp, cfg, old_logp=old, advantages=adv, response_mask=mask, ref_logp=ref, sft_rows=sft_rows
    )

  (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(logp)
  samples, _ = grpo.policy_loss(
    logp[:2], grpo.LossConfig(kl_coef=0.1), old_logp=old[:2], advantages=adv[:2], response_mask=mask[:2],
    ref_logp=ref[:2],
  )  # fmt: skip
  nll = -float((logp[2:] * mask[2:]).sum() / mask[2:].sum())
  assert float(metrics["sft_nll"]) == pytest.approx(nll, rel=1e-6)
  assert float(value) == pytest.approx(float(samples) + 0.5 * nll, rel=1e-6)
  assert np.isfinite(np.asarray(grads)).all()
  np.testing.assert_allclose(grads[2:], -0.5 * mask[2:] / mask[2:].sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="needs sft_rows"):
    grpo.policy_loss(logp, cfg, old_logp=old, advantages=adv, response_mask=mask, ref_logp=ref)
