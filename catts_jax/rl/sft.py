"""Supervised warm start: a policy trained on a benchmark's reference solutions.

Teacher-forced rows of (prompt with images, `metadata.solution` + EOS, so the model learns to
stop); the loss is `nll`, the token-mean negative log-likelihood of the solution tokens, on
the same `Learner` as CDRL (same optimizer, sharding and non-finite guard). The model comes
from `model.ckpt` (an HF directory) or, when that is empty, is created from scratch
(catts_jax.scratch: a tokenizer trained on the task's text and freshly initialised weights of
the `model.scratch` shape).

With `train.format_only` each image is paired with another problem's solution: the model
learns the answer format but nothing about the answers (the warm start of the CDRL learning
check, which then has to learn to see).

Checkpoints every `save_every` steps (a rerun with the same out dir resumes); greedy accuracy
on `eval.split` at the end and every `eval.every` steps; out/final is the HF export and
out/report.json the summary (loss curve, accuracy, wall time). Settings are checked and a
resume held to the run's recorded settings as in CDRL (catts_jax/rl/validate.py); a resume
cuts train.jsonl back to the restored step.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from catts_jax import data, runs, scratch, sharding
from catts_jax.checkpoint import Checkpointer
from catts_jax.data import synthetic
from catts_jax.eval import greedy
from catts_jax.models.qwen2_5_vl import ModelConfig, load_hf, save_hf
from catts_jax.policy import Policy
from catts_jax.processing import Processor
from catts_jax.rl.batch import TrainBatch
from catts_jax.rl.grpo import aggregate
from catts_jax.rl.learner import Additive, Learner, OptimizerConfig
from catts_jax.rl.validate import check, record_run, resume_changes, settings


def _nll_share(logp: jax.Array, batch: TrainBatch, tokens: jax.Array) -> tuple[jax.Array, dict]:
  return aggregate(-logp, batch.response_mask, "token_mean", tokens=tokens), {}


# The supervised objective for `Learner`: logp, batch.response_mask [B, R] -> the token-mean
# negative log-likelihood of the masked tokens (no extra metrics); a sum over rows once the
# batch's token count is fixed, so it also runs in micro-batches.
nll = Additive(lambda batch: jnp.maximum(batch.response_mask.sum(), 1), _nll_share)


def model_dir(cfg, out: pathlib.Path) -> pathlib.Path:
  """`model.ckpt`, or a new from-scratch checkpoint in out/init (built once)."""
  if cfg.model.ckpt:
    return pathlib.Path(cfg.model.ckpt)
  s = cfg.model.scratch
  return scratch.checkpoint_once(
    out / "init", s, lambda: synthetic.corpus(s.corpus_config) + ["You are a helpful assistant."]
  )


def solution_batch(
  policy: Policy, examples: Sequence[dict], template: str | None, solutions: Sequence[dict] | None = None
) -> tuple[TrainBatch, int]:
  """Teacher-forcing batch of (prompt with images, reference solution + EOS) and its
  response length R; response_mask [B, R] marks the solution tokens. `solutions`: take the
  solutions from these examples instead (format-only warm starts)."""
  prompts, images, responses = [], [], []
  for ex, sol in zip(examples, solutions or examples):
    prompt, ims = policy.example_prompt(ex, template)
    prompts.append(prompt)
    images.append(ims)
    responses.append(policy.solution_tokens(sol))
  sb = policy.processor.scoring_batch(prompts, responses, images)
  return TrainBatch(
    **sb.batch.model_inputs(), response_mask=sb.response_mask.astype(np.float32)
  ), sb.response_len


def evaluate(policy: Policy, params, cfg) -> dict:
  """Greedy accuracy of `params` on the first `eval.size` problems of `eval.split`."""
  ds = data.load(cfg.data.benchmark, config=cfg.data.config, split=cfg.eval.split, data_dir=cfg.data.data_dir)
  examples = ds[: min(len(ds), cfg.eval.size)]
  rows = greedy.greedy_eval(
    policy, examples, cfg.data.benchmark, state=params, max_new_tokens=cfg.eval.max_new_tokens
  )
  return greedy.summary(rows)


def train(cfg, out: pathlib.Path, rebuild: bool = False, override_resume: bool = False) -> dict:
  """Run (or resume) the supervised warm start of `cfg` into `out`, holding its lock (another
  run on it: runs.OutDirError at once); the summary written to out/report.json. A bad setting,
  or a resume with settings other than the run's (without `override_resume`), raises
  validate.ConfigError before any work. A non-finite loss raises FloatingPointError (the
  update is not applied). `rebuild` builds the dataset's cache again."""
  check(cfg, "sft", jax.device_count())
  out = pathlib.Path(out)
  with runs.locked(out):
    return _train(cfg, out, rebuild, override_resume)


def _train(cfg, out: pathlib.Path, rebuild: bool, override_resume: bool) -> dict:
  out.mkdir(parents=True, exist_ok=True)
  began = time.perf_counter()
  t = cfg.train
  checkpoints = Checkpointer(out / "checkpoints", keep=2, every=t.save_every)
  run_settings = settings(cfg)
  changed = resume_changes(out, run_settings, checkpoints.latest_step(), override_resume)
  path = model_dir(cfg, out)
  mesh = sharding.make_mesh(dict(cfg.mesh)) if cfg.get("mesh") else None
  model_cfg = ModelConfig.from_pretrained(path).replace(dtype=cfg.model.dtype)
  model = load_hf(path, model_cfg, mesh=mesh)
  policy = Policy(
    model, Processor(path, model_cfg, buckets_per_octave=cfg.model.get("buckets_per_octave", 1))
  )
  learner = Learner(
    model,
    nll,
    OptimizerConfig(**cfg.optimizer.to_dict()),
    mesh=mesh,
    micro_batch=cfg.train.get("micro_batch", 0),
  )
  ds = data.load(
    cfg.data.benchmark,
    config=cfg.data.config,
    split=cfg.data.split,
    data_dir=cfg.data.data_dir,
    rebuild=rebuild,
  )

  start = learner.resume(checkpoints)
  resumes = record_run(out, run_settings, start, changed)
  runs.drop_rows_after(out / "train.jsonl", start)
  from tqdm import tqdm

  history = []
  with runs.appending(out / "train.jsonl") as write:
    if changed:  # override_resume: the settings changed from here on
      write({"step": start, "override_resume": changed})
    for step in tqdm(range(start, t.steps), initial=start, total=t.steps, desc="sft"):
      examples = [ds[i] for i in data.step_indices(len(ds), step, t.batch_size, t.seed)]
      # Format only: each image gets another problem's solution, so the answers carry no
      # information about the image (accuracy stays at chance; the format is learned).
      solutions = examples[1:] + examples[:1] if t.format_only else None
      batch, response_len = solution_batch(policy, examples, cfg.data.template, solutions)
      try:
        record = {"step": step + 1, "loss": learner.step(batch, response_len)["loss"]}
      except FloatingPointError as e:
        checkpoints.wait()
        raise FloatingPointError(f"step {step}: {e}") from e
      if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < t.steps:
        record["eval"] = evaluate(policy, learner.params, cfg)
      checkpoints.save(step + 1, learner.params, learner.opt_state, {"step": step + 1})
      history.append(record)
      write(record)
  checkpoints.wait()
  final_eval = evaluate(policy, learner.params, cfg)
  final = save_hf(learner.model(), out / "final", processor_dir=path)
  summary = {
    "steps": t.steps,
    "resumed_from": start,
    "resumes": resumes,  # run.json's history: resumes that changed settings
    "final_checkpoint": str(final),
    "loss_first": history[0]["loss"] if history else None,
    "loss_last": history[-1]["loss"] if history else None,
    "eval": final_eval,
    "seconds": time.perf_counter() - began,
    "config": cfg.to_dict(),
  }
  runs.write_json(out / "report.json", summary)
  return summary
