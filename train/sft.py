"""Supervised warm start: `python -m train.sft --config configs/synthetic_tiny.py --out DIR`.

Trains a policy on the reference solutions (`metadata.solution`) of a benchmark's problems,
teacher-forced, loss = mean negative log-likelihood of the solution tokens (EOS included, so
the model learns to stop). The model comes from `model.ckpt` (an HF directory) or, when that
is empty, is created from scratch (catts_jax.scratch: a tokenizer trained on the task's text
and freshly initialised weights of the `model.scratch` shape).

With `train.format_only` each image is paired with another problem's solution: the model
learns the answer format but nothing about the answers (the warm start of the CDRL learning
check, which then has to learn to see).

Checkpoints every `save_every` steps (a rerun with the same --out resumes); greedy accuracy
on `eval.split` at the end and every `eval_every` steps; DIR/final is the HF export and
DIR/report.json the summary (loss curve, accuracy, wall time).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from catts_jax import data, scratch
from catts_jax.checkpoint import Checkpointer
from catts_jax.data import synthetic
from catts_jax.eval import greedy, report
from catts_jax.models.qwen2_5_vl import ModelConfig, load_hf, save_hf
from catts_jax.policy import Policy
from catts_jax.processing import MODEL_INPUT_KEYS, Processor
from catts_jax.rl.learner import OptimizerConfig, make_optimizer, response_logprobs


def model_dir(cfg, out: pathlib.Path) -> pathlib.Path:
  """`model.ckpt`, or a new from-scratch checkpoint in out/init (built once)."""
  if cfg.model.ckpt:
    return pathlib.Path(cfg.model.ckpt)
  init = out / "init"
  if not (init / "config.json").is_file():
    s = cfg.model.scratch
    corpus = synthetic.corpus(s.corpus_config) + ["You are a helpful assistant."]
    scratch.new_checkpoint(
      init,
      corpus=corpus,
      text=s.text.to_dict(),
      vision=s.vision.to_dict(),
      vocab_size=s.vocab_size,
      seed=s.seed,
      min_pixels=s.min_pixels,
      max_pixels=s.max_pixels,
    )
  return init


class SupervisedStep:
  """A jitted step of token-mean NLL over the response tokens; params and optimizer state
  are donated."""

  def __init__(self, model: nnx.Module, optimizer: optax.GradientTransformation):
    self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
    self.optimizer = optimizer
    self.opt_state = jax.jit(optimizer.init)(self.params)
    self._step = jax.jit(self._impl, static_argnums=3, donate_argnums=(0, 1))

  def _loss(self, params, batch, response_len):
    model = nnx.merge(self.graphdef, params, self.rest)
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
    logp = response_logprobs(model, inputs, response_len)
    mask = batch["response_mask"]
    return -(logp * mask).sum() / jnp.maximum(mask.sum(), 1)

  def _impl(self, params, opt_state, batch, response_len):
    loss, grads = jax.value_and_grad(self._loss)(params, batch, response_len)
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def __call__(self, batch: dict, response_len: int) -> float:
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    self.params, self.opt_state, loss = self._step(self.params, self.opt_state, batch, response_len)
    return float(loss)


def solution_batch(
  policy: Policy, examples: list[dict], template: str | None, solutions: list[dict] | None = None
) -> tuple[dict, int]:
  """Teacher-forcing batch of (prompt with images, reference solution + EOS). `solutions`:
  take the solutions from these examples instead (format-only warm starts)."""
  prompts, images, responses = [], [], []
  for ex, sol in zip(examples, solutions or examples):
    prompt, ims = policy.example_prompt(ex, template)
    prompts.append(prompt)
    images.append(ims)
    responses.append(policy.solution_tokens(sol))
  sb = policy.processor.scoring_batch(prompts, responses, images)
  return {**sb.batch.model_inputs(), "response_mask": sb.response_mask.astype("float32")}, sb.response_len


def evaluate(policy, params, cfg) -> dict:
  ds = data.load(cfg.data.benchmark, config=cfg.data.config, split=cfg.eval.split, data_dir=cfg.data.data_dir)
  examples = ds[: min(len(ds), cfg.eval.size)]
  rows = greedy.greedy_eval(
    policy, examples, cfg.data.benchmark, state=params, max_new_tokens=cfg.eval.max_new_tokens
  )
  return greedy.summary(rows)


def train(cfg, out: pathlib.Path) -> dict:
  out.mkdir(parents=True, exist_ok=True)
  began = time.perf_counter()
  path = model_dir(cfg, out)
  model_cfg = ModelConfig.from_pretrained(path).replace(dtype=cfg.model.dtype)
  model = load_hf(path, model_cfg)
  policy = Policy(
    model, Processor(path, model_cfg, buckets_per_octave=cfg.model.get("buckets_per_octave", 1))
  )
  opt_cfg = OptimizerConfig(**cfg.optimizer.to_dict())
  step_fn = SupervisedStep(model, make_optimizer(opt_cfg, nnx.state(model, nnx.Param)))
  ds = data.load(cfg.data.benchmark, config=cfg.data.config, split=cfg.data.split, data_dir=cfg.data.data_dir)

  t = cfg.train
  checkpoints = Checkpointer(out / "checkpoints", keep=2, every=t.save_every)
  start = 0
  restored = checkpoints.restore(step_fn.params, step_fn.opt_state)
  if restored is not None:
    step_fn.params, step_fn.opt_state, record = restored
    start = record["step"]
  from tqdm import tqdm

  history = []
  with (out / "train.jsonl").open("a") as log:
    for step in tqdm(range(start, t.steps), initial=start, total=t.steps, desc="sft"):
      examples = [ds[i] for i in data.step_indices(len(ds), step, t.batch_size, t.seed)]
      # Format only: each image gets another problem's solution, so the answers carry no
      # information about the image (accuracy stays at chance; the format is learned).
      solutions = examples[1:] + examples[:1] if t.format_only else None
      batch, response_len = solution_batch(policy, examples, cfg.data.template, solutions)
      record = {"step": step + 1, "loss": step_fn(batch, response_len)}
      if not math.isfinite(record["loss"]):
        print(f"step {step}: non-finite loss {record['loss']}; stopping", file=sys.stderr)
        raise SystemExit(3)
      if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < t.steps:
        record["eval"] = evaluate(policy, step_fn.params, cfg)
      checkpoints.save(step + 1, step_fn.params, step_fn.opt_state, {"step": step + 1})
      history.append(record)
      log.write(json.dumps(record) + "\n")
      log.flush()
  checkpoints.wait()
  final_eval = evaluate(policy, step_fn.params, cfg)
  model = nnx.merge(step_fn.graphdef, step_fn.params, step_fn.rest)
  final = save_hf(model, out / "final", processor_dir=path)
  summary = {
    "steps": t.steps,
    "resumed_from": start,
    "final_checkpoint": str(final),
    "loss_first": history[0]["loss"] if history else None,
    "loss_last": history[-1]["loss"] if history else None,
    "eval": final_eval,
    "seconds": time.perf_counter() - began,
    "config": cfg.to_dict(),
  }
  report.write_json(out / "report.json", summary)
  print(report.text_table([{"steps": t.steps, **final_eval, "seconds": summary["seconds"]}]))
  return summary


def main() -> None:
  # Flags are defined here, not at import, so other entry points can import `train`.
  config = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
  out = flags.DEFINE_string("out", None, "output directory (checkpoints, train.jsonl, report.json, final/)")

  def run(argv) -> None:
    del argv
    if not out.value:
      raise app.UsageError("--out is required")
    logging.set_verbosity(logging.WARNING)
    train(config.value, pathlib.Path(out.value))

  app.run(run)


if __name__ == "__main__":
  main()
