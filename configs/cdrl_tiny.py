"""CDRL on CPU with a tiny checkpoint: `python -m train.cdrl --config configs/cdrl_tiny.py
--config.model.ckpt=DIR --config.data.manual_dir=DIR --out runs/cdrl_tiny`.

Small enough for tests (a few steps in seconds); every field of the real configs is here.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def base_config() -> ml_collections.ConfigDict:
  """All CDRL fields with paper-like defaults (Qwen2.5-VL-7B, EasyR1/verl settings)."""
  c = ml_collections.ConfigDict()
  c.model = dict(ckpt="", dtype="bfloat16")
  # placeholder(T): None by default, and still settable from the command line.
  c.data = dict(
    benchmark="jsonl",
    manual_dir="",
    config=placeholder(str),  # the synthetic benchmark's task set
    split=placeholder(str),
    data_dir=placeholder(str),
    limit=placeholder(int),
    template=placeholder(str),
  )
  c.rollout = dict(
    group_size=8,
    max_new_tokens=2048,
    temperature=1.0,
    top_p=1.0,
    perturbation="noise",
    strength=0.5,
    targeted=True,
    regions=4,
    reward_weights={"accuracy": 1.0, "sensitivity": 0.5, "calibration": 0.5},
    calibration_form="signed",
    calibration_span="response",  # or "answer": the final \\boxed{} answer's confidence
    advantage="grpo",
    dynamic_filter=True,
    # Also differentiate the confidence rewards through conf(y|x) and conf(y|x_noisy)
    # (catts_jax/rl/rollout.py): the perturbed copies join the batch. Off here: the paper
    # describes rewards only.
    confidence_gradient=False,
    confidence_gradient_from=0,  # the step it starts at
    # Rows per sampler / scorer call, multiples of group_size (0: all rows at once): bound the
    # KV cache and a scoring pass's activations.
    sample_micro_batch=0,
    score_micro_batch=0,
  )
  c.clip = dict(model="ViT-B-32", pretrained="openai")  # for targeted perturbations
  c.loss = dict(
    eps_low=0.2,
    eps_high=0.28,
    dual_clip=None,
    kl_coef=1e-2,
    kl_estimator="k3",
    aggregation="token_mean",
    # > 0: the NLL of each trained problem's reference solution (metadata.solution) joins
    # the loss with this weight (catts_jax/rl/grpo.py). Off here: the paper trains on rewards.
    sft_coef=0.0,
  )
  c.optimizer = dict(
    learning_rate=1e-6,
    warmup_steps=10,
    total_steps=500,
    weight_decay=1e-2,
    clip_norm=1.0,
    accumulate=1,
    freeze_vision=False,
  )
  c.mesh = dict(data=1, fsdp=-1, tensor=1)  # -1: the devices left over
  # The rollout's mesh over the same devices, e.g. "data=-1,tensor=4" (weights resharded once
  # a step); "": the trainer's mesh. FSDP weights decode with collectives every token.
  c.rollout_mesh = ""
  # oversample > 1: draw that many times prompts_per_step problems per step and train on the
  # informative groups first (DAPO's refill of groups whose rewards have zero variance).
  # micro_batch: rows per micro-batch of the train step, a multiple of data x fsdp (0: the
  # whole batch at once); gradients accumulate in the step, which equals the whole batch's.
  c.train = dict(
    steps=500,
    prompts_per_step=16,
    oversample=1.0,
    updates_per_rollout=1,
    micro_batch=0,
    seed=0,
    save_every=10,
    keep=3,
  )
  return c


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model.dtype = "float32"
  c.rollout.group_size = 4
  c.rollout.max_new_tokens = 8
  c.rollout.targeted = False
  c.rollout.strength = 1.0
  c.loss.kl_coef = 1e-2
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 0
  c.optimizer.total_steps = 100
  c.mesh = dict(data=1, fsdp=1, tensor=1)
  c.train.steps = 3
  c.train.prompts_per_step = 2
  c.train.save_every = 1
  c.train.keep = 2
  return c
