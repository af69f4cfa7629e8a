"""CA-TTS and its baselines: `python -m infer.catts --config configs/catts.py[:PRESET] [--config.tts.tau=0.3]`.

Every weight, threshold and gate of the vote (`tts`, see catts_jax/tts/voting.py), how the N
samples are drawn, the self-check's and VCD's perturbed image, and how the Expert is called.
Presets (docs/fidelity.md compares them setting by setting, with the reason for each difference):
- `ours` (the default): what this project measures with (the demo, the bench, the README).
- `paper`: the paper's text; where it is silent, the authors' release (their prompts and
  sampling), with our thresholds for the gates the paper describes but does not quantify.
- `release`: the official release (alibaba/CA-TTS) as it runs: its prompts, sampling, top-20
  confidence votes, int(tau * N) Voter boost, a = 0.1, no Planner and no gates. Its bugs are not
  reproduced (the self-check's vote ignores the contrastive logits; Self-Reflection is commented
  out; a substring grader).
Values the paper does not give are ours and untuned; the comments say which.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections.config_dict import placeholder

from catts_jax.tts.voting import TTSConfig

PRESETS = ("ours", "paper", "release")


def get_config(preset: str = "ours") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"configs/catts.py:{preset}: unknown preset; expected one of {', '.join(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.tts = dataclasses.asdict(TTSConfig(adaptive=True))  # adaptive: report catts-adaptive too
  # The N samples per problem (drawn once at the largest N; smaller N use their prefix);
  # greedy and VCD decode with the same max_new_tokens.
  c.sampling = dict(temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=1024)  # untuned
  # Self-Reflection: the policy re-answers with the critique in context, greedily.
  c.reflection = dict(temperature=0.0, max_new_tokens=1024)
  # Visual Self-Check (catts_jax/tts/selfcheck.py). contrastive: the paper's (the paper and
  # release presets), the VCD decode's answer (the vcd block below) joins the vote; drop:
  # ours, each candidate's response scored under the image and under this perturbation of it;
  # both. Ours chosen on synthetic validation problems 256-767: contrastive cost CA-TTS 4.5
  # points at N = 16, drop none (docs/reports/selfcheck_choice).
  c.selfcheck = dict(mode="drop", perturbation="vcd_noise", strength=0.5)
  # VCD decoding (baseline and self-check vote): logits (1 + alpha) l - alpha l_noisy where
  # l >= log(beta) + max l; VCD's own noise is 500 of 1000 diffusion steps (strength 0.5).
  c.vcd = dict(alpha=1.0, beta=0.1, perturbation="vcd_noise", strength=0.5)
  # The Planner. paper: as the paper and the release, it sees image + question only (one call
  # per problem, before sampling in effect) and orders all three modules; adaptive (ours): it
  # also sees the sampled answers, plans again at each N and may skip modules.
  c.planner = dict(mode="paper")
  # The Expert's and the re-answer's prompts: ours (catts_jax/tts/voter.py, critic.py,
  # planner.py, reflection.py) or the release's word for word (catts_jax/tts/release_prompts.py).
  c.prompts = "ours"
  c.expert = dict(
    timeout_s=60.0,
    max_retries=3,
    backoff_s=1.0,
    max_backoff_s=30.0,
    budget_s=180.0,  # a call retries no longer than this (attempts and waits together)
    failure_budget_s=300.0,  # failed calls may cost this much in all; then the Expert is dead
    temperature=0.0,
    planner_max_tokens=256,
    voter_max_tokens=512,
    critic_max_tokens=1024,
    model=placeholder(str),  # the served model's name (default: what GET /v1/models lists)
    provider=placeholder(str),  # hf: specs: the Inference Provider (default: the router's)
    api_key_env=placeholder(str),  # http(s) specs: the variable that holds the API key
    concurrency=8,  # calls in flight at once (a remote expert; `self` decodes what is asked in one batch)
  )
  c.template = placeholder(str)  # prompt template (catts_jax.data.prompts); None = the benchmark's
  c.batch_size = 4  # problems per sampler call (rows = batch_size * largest N)
  # Problems drawn and unfinished at once: their Expert calls concurrent, their re-answers one
  # decode, their self-checks one pass; the next chunk is drawn while the Expert works.
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
  # Every decode's KV cache starts at the prompt's slots rounded up to a power of two and
  # doubles as replies grow: a step reads at most twice the slots it needs instead of prompt +
  # max_new_tokens (8192 in the paper's settings). Sizes a short decode never reaches are never compiled.
  c.grow_cache = True
  # Each prompt's KV is kept once and read by its N samples together, not copied N times (N x
  # fewer prompt reads a decode step). Excludes compact_every (compaction moves rows off it).
  c.share_prompt = True
  # The policy's compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU (bf16 is no faster
  # there). run.json records what it resolved to.
  c.dtype = "auto"
  c.seed = 0
  if preset == "paper":
    _authors_settings(c)
  elif preset == "release":
    _authors_settings(c)
    c.tts.update(sc_confidence="conf_mean", voter_count="answered", voter_round=True, gated=False)
    c.tts.update(deepconf_keep=0.1, deepconf_window=20)  # its top10_*_filtered rows, 20-token windows
    c.vcd.update(alpha=0.1, beta=0.1)  # its self_check(contrastive_alpha=0.1), cd_beta 0.1
    c.planner.mode = "off"  # its pipeline never calls the Planner (planner.enabled: false)
    for role in ("planner", "voter", "critic"):
      c.expert[f"{role}_max_tokens"] = 2048  # one max_tokens for every Expert call
  return c


def _authors_settings(c: ml_collections.ConfigDict) -> None:
  """What the paper leaves unsaid, as the authors' release has it."""
  c.prompts = "release"
  c.template = "release"  # the bare question for Math-Vision/MathVista, its boxed wording elsewhere
  c.sampling.update(temperature=1.0, top_p=1.0, top_k=40, max_new_tokens=8192)
  c.reflection.max_new_tokens = 8192  # the re-answer decodes greedily with the same budget
  c.selfcheck.mode = "contrastive"  # the paper's module (the release votes it wrongly: not reproduced)
