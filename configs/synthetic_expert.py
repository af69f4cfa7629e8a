"""A from-scratch CA-TTS Expert for the synthetic reasoning tasks (Planner, Voter, Critic and a
plain solver): `python -m train.expert --config configs/synthetic_expert.py --out runs/expert`.

`full` (default): the `synthetic_expert` shape (catts_jax/models/qwen2_5_vl/presets.py) on the
train split, its Voter and Critic rows from the bundled CDRL policy's samples; evaluated on
the first `eval.size` validation problems. `tiny`: a few steps on a handful of problems, for
the tests. Library: catts_jax/rl/expert_sft.py (stages), expert_data.py (rows and targets),
expert_eval.py (the evaluation). Run history: docs/experiments/synthetic_expert.md.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from catts_jax.models.qwen2_5_vl import presets


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
  if variant not in ("full", "tiny"):
    raise ValueError(f"variant {variant!r}: expected 'full' or 'tiny'")
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  # The policy whose answers the Voter weighs and the Critic reviews; n samples per problem at
  # CA-TTS's sampling temperature (configs/catts.py), graded, cached in the run directory.
  c.policy = dict(
    ckpt="checkpoints/synthetic_cdrl",
    problems=8 if tiny else 1024,
    n=16,  # CA-TTS's largest N in the demo: the Voter sees as many candidates as it will there
    temperature=0.7,
    max_new_tokens=96,
    seed=0,
    batch=32,
  )
  shape = presets.scratch_shape("tiny" if tiny else "synthetic_expert")
  c.model = dict(
    dtype="float32",
    buckets_per_octave=4,
    scratch=dict(
      vocab_size=400 if tiny else 1024,
      corpus_problems=8 if tiny else 256,  # role requests and replies in the tokenizer's corpus
      seed=0,
      min_pixels=56 * 56,
      max_pixels=112 * 112,
      **shape,
    ),
  )
  c.data = dict(
    benchmark="synthetic",
    config="reasoning",
    split="train",
    data_dir=placeholder(str),
    template=None,
    problems=8 if tiny else 4096,  # solve and planner rows; voter and critic: policy.problems
  )
  c.rows = dict(voter_ns=(2, 4, 8, 16))  # the Voter sees the candidates of the first n samples
  steps = 4 if tiny else 900
  c.optimizer = dict(
    learning_rate=3e-3,
    warmup_steps=0 if tiny else 20,
    total_steps=steps,
    weight_decay=0.0,
    clip_norm=1.0,
    accumulate=1,
    # The tower keeps its random initialisation: trained, it lost the cells' colours that a
    # random one holds (docs/reports/expert_quality/cell_probe.json), and frozen it counts 0.53
    # against 0.20 on validation (synthetic_expert.md, run 6).
    freeze_vision=True,
  )
  # Each step is one batch of train.batches[cycle[step % len(cycle)]]: so many rows per kind.
  # Solve rows are short (~120 tokens with the solution), role rows ~200-250: a batch of one
  # length class pads little.
  c.train = dict(
    steps=steps,
    seed=0,
    save_every=2 if tiny else 50,
    cycle=("solve", "roles") if tiny else ("solve", "solve", "roles"),
    batches=dict(
      solve=dict(solve=4 if tiny else 32),
      roles=dict(voter=2, critic=2, planner=1) if tiny else dict(voter=15, critic=15, planner=2),
    ),
  )
  c.eval = dict(
    split="validation",  # the test split is never used to choose anything
    size=4 if tiny else 256,
    voter_n=8,
    batch=32,
    # Reply budgets (CA-TTS's are 256 / 512 / 1024); a reply cut short fails to parse. The
    # Voter's reply holds its reasoning (~40 tokens) and the JSON (up to ~60 at 8 candidates).
    max_tokens=dict(planner=48, voter=192, critic=160) if not tiny else dict(planner=8, voter=8, critic=8),
    solve_max_new_tokens=8 if tiny else 64,
  )
  c.export = dict(dtype="float32")  # or bfloat16: half the bundle
  return c
