"""The Visual Self-Check's scoring path on a real policy, by value: each candidate response is
scored under the problem's image and under the configured perturbation of it."""

from __future__ import annotations

import numpy as np
from tiny_hf import random_image

from catts_jax.policy import Policy
from catts_jax.tts.context import Problem, SelfcheckScores, stable_seed
from catts_jax.tts.policy_ops import PolicyOps
from catts_jax.tts.selfcheck import perturbed_images
from configs import catts as catts_config


def test_selfcheck_scores_responses_under_the_image_and_its_perturbation(tiny_ckpt):
  policy = Policy.from_pretrained(tiny_ckpt)
  cfg = catts_config.get_config()
  ops = PolicyOps(policy, "mathvision", cfg)
  rng = np.random.default_rng(0)
  problems, requests = [], []
  for i, images in enumerate(
    ([random_image(rng, 84, 56)], [random_image(rng, 56, 56), random_image(rng, 56, 84)])
  ):
    prompt = policy.prompt(f"How many shapes, {i}?", len(images))
    problems.append(Problem(i, {"id": f"p{i}"}, prompt, images, "How many?"))
    responses = [policy.processor.tokenizer.encode(t) for t in ("It is 3.", "Four, I think.", "7")[: 3 - i]]
    requests.append(SelfcheckScores(problems[-1], responses))
  got = ops.selfcheck_all(requests)
  s = cfg.selfcheck
  for problem, request, (orig, noisy) in zip(problems, requests, got):
    k = len(request.responses)
    seed = stable_seed(cfg.seed, problem.id, "selfcheck")
    perturbed = perturbed_images(problem.images, s.perturbation, s.strength, seed)
    want_orig = policy.score([problem.prompt] * k, request.responses, [problem.images] * k)["confidence"]
    want_noisy = policy.score([problem.prompt] * k, request.responses, [perturbed] * k)["confidence"]
    np.testing.assert_allclose(orig, want_orig, rtol=1e-5)
    np.testing.assert_allclose(noisy, want_noisy, rtol=1e-5)
    assert (np.abs(orig - noisy) / orig).max() > 1e-2  # the perturbation reaches the scores
