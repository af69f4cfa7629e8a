"""CA-TTS and its baselines: `python -m infer.catts --config configs/catts.py [--config.tts.tau=0.3]`.

Every weight, threshold and gate of the vote (`tts`, see catts_jax/tts/voting.py), how the N
samples are drawn, the self-check's and VCD's perturbed image, and how the Expert is called.
Values the paper does not give are ours and untuned; the comments say which.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections.config_dict import placeholder

from catts_jax.tts.voting import TTSConfig


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tts = dataclasses.asdict(TTSConfig(adaptive=True))  # adaptive: report catts-adaptive too
  # The N samples per problem (drawn once at the largest N; smaller N use their prefix);
  # greedy and VCD decode with the same max_new_tokens.
  c.sampling = dict(temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=1024)  # untuned
  # Self-Reflection: the policy re-answers with the critique in context, greedily.
  c.reflection = dict(temperature=0.0, max_new_tokens=1024)
  # Visual Self-Check (catts_jax/tts/selfcheck.py). contrastive: the paper's, the VCD decode's
  # answer (the vcd block below) joins the vote; drop: ours, each candidate's response scored
  # under the image and under this perturbation of it; both.
  c.selfcheck = dict(mode="contrastive", perturbation="vcd_noise", strength=0.5)
  # VCD decoding (baseline and self-check vote): logits (1 + alpha) l - alpha l_noisy where
  # l >= log(beta) + max l; VCD's own noise is 500 of 1000 diffusion steps (strength 0.5).
  c.vcd = dict(alpha=1.0, beta=0.1, perturbation="vcd_noise", strength=0.5)
  # The Planner. paper: as the paper and the release, it sees image + question only (one call
  # per problem, before sampling in effect) and orders all three modules; adaptive (ours): it
  # also sees the sampled answers, plans again at each N and may skip modules.
  c.planner = dict(mode="paper")
  c.expert = dict(
    timeout_s=60.0,
    max_retries=3,
    backoff_s=1.0,
    max_backoff_s=30.0,
    temperature=0.0,
    planner_max_tokens=256,
    voter_max_tokens=512,
    critic_max_tokens=1024,
    model=placeholder(str),  # the served model's name (default: what GET /v1/models lists)
    provider=placeholder(str),  # hf: specs: the Inference Provider (default: the router's)
    api_key_env=placeholder(str),  # http(s) specs: the variable that holds the API key
    concurrency=8,  # calls in flight at once (a remote expert; `self` decodes a round in one batch)
  )
  c.template = placeholder(str)  # prompt template (catts_jax.data.prompts); None = the benchmark's
  c.batch_size = 4  # problems per sampler call (rows = batch_size * largest N)
  # Problems that go through the modules together after their draw (whole draw chunks): each
  # round's Expert calls concurrent, its re-answers one decode, its self-checks one pass.
  c.solve_batch = 32
  c.serial = False  # True: one problem at a time after the draw (the reference; slower)
  # Requests per policy call in the modules (re-answers, self-checks, the self Expert's
  # decodes). 0 = auto: solve_batch on GPU/TPU, 1 on CPU, where batching was slower
  # (docs/reports/bench_catts: prefills are compute-bound at one row; a batch waits for its
  # longest reply).
  c.module_batch = 0
  # Every decode: each K steps, rows that finished leave the batch once the rest fits half of
  # it (0: a batch runs until its longest row ends). Off: on CPU its extra compiles cost more
  # than it saves (32 problems: 155 s against 136 s); untried on accelerators.
  c.compact_every = 0
  # The policy's compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU (bf16 is no faster
  # there). run.json records what it resolved to.
  c.dtype = "auto"
  c.seed = 0
  return c
