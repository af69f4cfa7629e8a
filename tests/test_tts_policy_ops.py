"""PolicyOps' draw cache: runs that share a policy read a draw back instead of sampling again,
and what a run does to its samples never reaches the cache."""

from __future__ import annotations

import numpy as np
from tiny_hf import random_image

from catts_jax.policy import Policy
from catts_jax.tts.context import Problem
from catts_jax.tts.policy_ops import PolicyOps
from configs import catts as catts_config


def test_draws_are_shared_by_runs_on_one_policy(tiny_ckpt):
  policy = Policy.from_pretrained(tiny_ckpt)
  cfg = catts_config.get_config()
  cfg.sampling.max_new_tokens = 8
  calls = []
  sample = policy.sample
  policy.sample = lambda *a, **k: calls.append(1) or sample(*a, **k)
  image = random_image(np.random.default_rng(0), 56, 56)
  problems = [
    Problem(0, {"id": "p0", "answer": "3"}, policy.prompt("How many shapes?", 1), [image], "How many?")
  ]
  draws: dict = {}
  first = PolicyOps(policy, "mathvision", cfg, draws=draws).draw(problems, n=2, seed=0)
  first[0].samples[0].answer = "changed by a module"
  again = PolicyOps(policy, "mathvision", cfg, draws=draws).draw(problems, n=2, seed=0)
  assert len(calls) == 1  # read back
  alone = PolicyOps(policy, "mathvision", cfg).draw(problems, n=2, seed=0)
  assert [s.text for s in again[0].samples] == [s.text for s in alone[0].samples]
  assert again[0].samples[0].answer == alone[0].samples[0].answer != "changed by a module"
  np.testing.assert_array_equal(again[0].token_conf, alone[0].token_conf)
  PolicyOps(policy, "mathvision", cfg, draws=draws).draw(problems, n=2, seed=1)  # another seed: drawn
  assert len(calls) == 3
