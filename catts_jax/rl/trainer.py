"""The CDRL training loop: `train(cfg, out)` runs (or resumes) a run of a CDRL config.

Each step: a batch of problems -> rollout (G samples on the original image, confidences under
a perturbed one, rewards, advantages) -> `updates_per_rollout` optimisation steps. Params,
optimizer state and the data position are checkpointed every `save_every` steps (orbax,
async); a rerun with the same out dir resumes from the latest complete checkpoint. A
non-finite loss or gradient stops the run (`train` raises FloatingPointError) and leaves the
last checkpoint intact. Logs go to out/train.jsonl and TensorBoard (out/tb); the final policy
is exported to out/final as an HF directory, with out/report.json summarising the run.

Before any work: every setting is checked (catts_jax/rl/validate.py; a bad one is a
ConfigError naming it), and a resume must have the settings OUT/run.json recorded at the
run's first start (or `override_resume`, recorded in run.json's history and train.jsonl). A
resume cuts train.jsonl back to the restored step and TensorBoard purges the later steps
(`tensorboard`): a step logged but never checkpointed, redone after a kill, shows once.

Layouts: the sampler, the scorer and the train step all shard their rows over data x fsdp
(`sharding.input_shardings`; the KV cache as `sampling.carry_shardings` says), and the
rollout's passes read the weights cast once per step to the compute dtype.

Multi-host (`initialize_distributed`): every process reads the step's problems and prepares
the same rollout inputs, so the sampler, the scorer and the train step run as one SPMD
program over all devices, each device taking its rows. The host work (decoding, perturbing,
grading) is repeated on every process. Only process 0 writes logs and the final export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import time

import jax
import numpy as np
from flax import nnx

from catts_jax import data, runs, sharding
from catts_jax.checkpoint import Checkpointer
from catts_jax.models.qwen2_5_vl import load_hf, presets, save_hf
from catts_jax.policy import Policy
from catts_jax.processing import Processor
from catts_jax.rl.grpo import LossConfig
from catts_jax.rl.learner import Learner, OptimizerConfig
from catts_jax.rl.rollout import RolloutConfig, rollout
from catts_jax.rl.validate import check, record_run, resume_changes, settings
from catts_jax.sampling import cast_state


def initialize_distributed(detect: bool) -> None:
  """jax.distributed from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or
  with `detect`, from what `jax.distributed.initialize()` finds (TPU pods, SLURM, ...)."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    number = lambda name: int(env[name]) if env.get(name) else None  # noqa: E731
    jax.distributed.initialize(
      env["JAX_COORDINATOR_ADDRESS"], number("JAX_NUM_PROCESSES"), number("JAX_PROCESS_ID")
    )
  elif detect:
    jax.distributed.initialize()


def tensorboard(out: pathlib.Path, start: int):
  """The run's SummaryWriter on out/tb (events at the 1-based step, as train.jsonl's rows).
  Resumed from step `start`, its first event is tensorboardX's purge (a SessionLog START at
  step start + 1): TensorBoard then drops the events of step start + 1 and later that it read
  from the event files before it (a killed run's), so each step shows once, as resumed."""
  from tensorboardX import SummaryWriter

  return SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None)


def train(cfg, out: pathlib.Path, rebuild: bool = False, override_resume: bool = False) -> dict:
  """Run (or resume) the CDRL run of `cfg` into `out`; the summary (written to out/report.json
  by process 0). A bad setting, or a resume with settings other than the run's (without
  `override_resume`), raises validate.ConfigError before any work. A non-finite loss or
  gradient raises FloatingPointError (the update is not applied; the last checkpoint is
  intact). Process 0 holds `out`'s lock for the run (another run on it: runs.OutDirError at
  once); `rebuild` builds the dataset's cache again."""
  check(cfg, "cdrl", jax.device_count())
  out = pathlib.Path(out)
  # Every process of a multi-host run writes the same `out` (checkpoints): one lock for them all.
  with runs.locked(out) if jax.process_index() == 0 else contextlib.nullcontext():
    return _train(cfg, out, rebuild, override_resume)


def _train(cfg, out: pathlib.Path, rebuild: bool, override_resume: bool) -> dict:
  started = time.perf_counter()
  main_process = jax.process_index() == 0
  out.mkdir(parents=True, exist_ok=True)
  t = cfg.train
  checkpoints = Checkpointer(out / "checkpoints", keep=t.keep, every=t.save_every)
  run_settings = settings(cfg)
  changed = resume_changes(out, run_settings, checkpoints.latest_step(), override_resume)
  mesh = sharding.make_mesh(dict(cfg.mesh))
  model_cfg = presets.resolve(cfg.model)  # the checkpoint's config with the run's dtypes and remat
  rollout_cfg = RolloutConfig(**{**cfg.rollout.to_dict(), "template": cfg.data.template})
  loss_cfg = LossConfig(**cfg.loss.to_dict())
  # One copy of the weights: the learner owns (and updates) them, and the policy samples and
  # scores with `state=learner.params`.
  model = load_hf(cfg.model.ckpt, model_cfg, mesh=mesh)
  processor_keys = ("min_pixels", "max_pixels", "buckets_per_octave")
  processor_kwargs = {k: cfg.model[k] for k in processor_keys if cfg.model.get(k)}
  # The rollout's passes run on the trainer's mesh, or on `rollout_mesh` (the same devices
  # arranged for decoding, e.g. tensor x data) with the weights resharded once per step.
  rollout_mesh = (
    sharding.rearrange_mesh(mesh, sharding.parse_mesh(cfg.rollout_mesh)) if cfg.get("rollout_mesh") else mesh
  )
  policy = Policy(model, Processor(cfg.model.ckpt, model_cfg, **processor_kwargs), mesh=rollout_mesh)
  learner = Learner(
    model,
    loss_cfg,
    OptimizerConfig(**cfg.optimizer.to_dict()),
    mesh=mesh,
    micro_batch=t.get("micro_batch", 0),
  )
  # The frozen reference for the KL term: the starting weights, loaded once more, kept in the
  # compute dtype (only the scorer reads it, and computes in that dtype) and in the trainer's
  # compact layout: on a rollout mesh the scoring pass gathers it layer by layer.
  ref_state = None
  if loss_cfg.kl_coef:
    ref_model = load_hf(cfg.model.ckpt, model_cfg, mesh=mesh)
    ref_state = cast_state(nnx.state(ref_model), model_cfg.compute_dtype)
    del ref_model
  saliency = None
  if rollout_cfg.targeted:
    from catts_jax.saliency import ClipSaliency

    saliency = ClipSaliency.from_pretrained(cfg.clip.model, cfg.clip.pretrained)

  dataset = data.load(
    cfg.data.benchmark,
    manual_dir=cfg.data.manual_dir or None,
    split=cfg.data.split,
    data_dir=cfg.data.data_dir,
    config=cfg.data.config,
    rebuild=rebuild,
  )
  num = min(len(dataset), cfg.data.limit or len(dataset))

  start = learner.resume(checkpoints)
  resumes = []
  if main_process:
    resumes = record_run(out, run_settings, start, changed)
    runs.drop_rows_after(out / "train.jsonl", start)
  from tqdm import tqdm

  history = []
  base_key = jax.random.key(t.seed)
  # DAPO refill: sample `oversample` times the problems a step trains on; the informative
  # groups fill the batch first (catts_jax/rl/rollout.py).
  drawn = int(np.ceil(t.prompts_per_step * t.oversample))
  with contextlib.ExitStack() as files:  # closed however the loop ends
    write = writer = None
    if main_process:
      write = files.enter_context(runs.appending(out / "train.jsonl"))
      if changed:  # --override_resume: the settings changed from here on
        write({"step": start, "override_resume": changed})
      writer = files.enter_context(contextlib.closing(tensorboard(out, start)))
    for step in tqdm(
      range(start, t.steps), initial=start, total=t.steps, desc="cdrl", disable=not main_process
    ):
      began = time.perf_counter()
      indices = data.step_indices(num, step, drawn, t.seed)
      examples = [dataset[i] for i in indices]
      batch, response_len, metrics = rollout(
        policy,
        examples,
        cfg.data.benchmark,
        rollout_cfg,
        jax.random.fold_in(base_key, step),
        state=learner.params,
        ref_state=ref_state,
        saliency=saliency,
        seed=t.seed + step,
        train_groups=t.prompts_per_step,
        step=step,
        solutions=loss_cfg.sft_coef > 0,
      )
      try:
        if not all(np.isfinite(v) for v in metrics.values()):
          raise FloatingPointError(f"non-finite rollout metrics {metrics}")
        if batch is not None:
          for _ in range(t.updates_per_rollout):
            metrics.update(learner.step(batch, response_len))
      except FloatingPointError as e:
        checkpoints.wait()
        raise FloatingPointError(
          f"step {step}: {e}; the last checkpoint (step {checkpoints.latest_step()}) is intact"
        ) from e
      seconds = time.perf_counter() - began
      metrics.update(
        step=step + 1,
        seconds=seconds,
        tokens_per_s=metrics["response_tokens"] * metrics["groups"] * rollout_cfg.group_size / seconds,
      )
      checkpoints.save(step + 1, learner.params, learner.opt_state, {"step": step + 1})
      history.append(metrics)
      if main_process:
        write(metrics)
        for name, value in metrics.items():
          writer.add_scalar(name, value, step + 1)
  checkpoints.wait()

  final = out / "final"
  if main_process:
    save_hf(learner.model(), final, processor_dir=cfg.model.ckpt)
  first, last = (history[0], history[-1]) if history else ({}, {})
  summary = {
    "steps": t.steps,
    "resumed_from": start,
    "resumes": resumes,  # run.json's history: resumes that changed settings
    "final_checkpoint": str(final),
    "first": first,
    "last": last,
    "seconds": time.perf_counter() - started,  # this invocation, loading and compiling included
    "config": cfg.to_dict(),
    "rollout": dataclasses.asdict(rollout_cfg),
    "meshes": {"train": dict(mesh.shape), "rollout": dict(rollout_mesh.shape)},
  }
  if main_process:
    runs.write_json(out / "report.json", summary)
  return summary
