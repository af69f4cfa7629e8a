"""A from-scratch CA-TTS Expert, trained on the synthetic train split for its three roles and as a
plain solver: `python -m train.expert --config configs/synthetic_expert.py --out DIR`.

Stages, each resumable in DIR (a rerun with the same --out goes on where it stopped):
1. The policy (`policy.ckpt`, the bundled CDRL checkpoint) draws `policy.n` answers per train
   problem (the first `policy.problems`) and per validation problem (the first `eval.size`),
   seeded per problem, into DIR/samples.jsonl and DIR/val_samples.jsonl; a rerun reads them
   and draws only the problems missing (run.json pins the settings they depend on).
2. DIR/init: a tokenizer trained on the task text and the roles' requests and replies
   (expert_data.corpus), and fresh weights of the `model.scratch` shape.
3. Training (the NLL of the targets, rl.sft.nll on the same Learner as SFT and CDRL): each step
   is one batch of `train.batches[train.cycle[step % len(cycle)]]`, i.e. so many rows of each
   kind (solve, planner, voter, critic; expert_data.py builds them). A kind's rows are read in
   seeded epochs of its pool, so the data position is the step number. Checkpoints every
   `train.save_every` steps, the loss per step in DIR/train.jsonl.
4. DIR/final: the HF export (float32, or `export.dtype` bfloat16); the evaluation on
   validation (expert_eval.py) in DIR/eval.jsonl, the summary in DIR/report.json.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ml_dtypes
import numpy as np

from catts_jax import data, runs, safetensors_io, scratch
from catts_jax.checkpoint import Checkpointer
from catts_jax.eval import answers
from catts_jax.models.qwen2_5_vl import ModelConfig, load_hf, save_hf
from catts_jax.policy import Policy
from catts_jax.processing import Processor
from catts_jax.rl import expert_data, expert_eval
from catts_jax.rl.batch import TrainBatch
from catts_jax.rl.learner import Learner, OptimizerConfig
from catts_jax.rl.sft import nll
from catts_jax.tts.context import stable_seed
from catts_jax.tts.self_expert import SelfExpert

SAMPLE_KEYS = ("policy.ckpt", "policy.n", "policy.temperature", "policy.max_new_tokens", "policy.seed")


def single_threaded_torch() -> None:
  """One torch thread: the HF processor's image ops on these tiny images (resize, normalise,
  patchify) took 1.4 s for 32 images with torch's thread pool contending with XLA's on 2
  cores, 0.1 s on one thread."""
  import torch

  torch.set_num_threads(1)


def load_policy(path) -> Policy:
  """The policy that draws the samples (tests swap in a stand-in)."""
  return Policy.from_pretrained(path)


class Lazy:
  """A value built on first use (`get()`; attributes pass through)."""

  def __init__(self, build):
    self._build, self._value = build, None

  def get(self):
    if self._value is None:
      self._value = self._build()
    return self._value

  def __getattr__(self, name):
    return getattr(self.get(), name)


def draw_samples(
  policy: Policy,
  examples: Sequence[Mapping[str, Any]],
  path: pathlib.Path,
  *,
  n: int,
  temperature: float,
  max_new_tokens: int,
  seed: int,
  batch: int = 32,
  template: str | None = None,
) -> dict[int, dict]:
  """index -> {"id", "texts", "answers", "correct", "confidence"}: `n` graded samples of the
  policy per example, each problem seeded by `seed` and its id (not by its batch). Rows
  already in `path` (JSONL) are kept; only the missing problems are drawn, streamed there."""
  have = {int(r["index"]): r for r in runs.read_rows(path)}
  todo = [i for i in range(len(examples)) if i not in have]
  with runs.appending(path) as write:
    for start in range(0, len(todo), batch):
      chunk = todo[start : start + batch]
      prompts, images = zip(*(policy.example_prompt(examples[i], template) for i in chunk))
      out = policy.sample(
        list(prompts), list(images), seeds=[stable_seed(seed, examples[i]["id"]) for i in chunk],
        n=n, temperature=temperature, max_new_tokens=max_new_tokens,
      )  # fmt: skip
      for b, i in enumerate(chunk):
        graded = [answers.grade("synthetic", t, examples[i]) for t in out.texts[b]]
        row = {
          "index": i,
          "id": examples[i]["id"],
          "texts": out.texts[b],
          "answers": [a for _, a in graded],
          "correct": [bool(c) for c, _ in graded],
          "confidence": [float(c) for c in out.scores["confidence"][b]],
        }
        write(row)
        have[i] = row
  return have


def model_dir(cfg, out: pathlib.Path, examples: Sequence[Mapping[str, Any]]) -> pathlib.Path:
  """out/init: a new from-scratch Expert whose tokenizer saw the roles' text (built once)."""
  s = cfg.model.scratch
  return scratch.checkpoint_once(
    out / "init", s, lambda: expert_data.corpus(examples[: s.corpus_problems], cfg.data.template)
  )


def consumed(cycle: Sequence[str], batches: Mapping[str, Mapping[str, int]], step: int, kind: str) -> int:
  """How many rows of `kind` the steps before `step` read."""
  per = [batches[name].get(kind, 0) for name in cycle]
  full, part = divmod(step, len(cycle))
  return full * sum(per) + sum(per[:part])


def step_rows(cfg, pools: Mapping[str, list], step: int) -> list:
  """The rows of training `step`: for each kind in its batch, the next rows of that kind's
  seeded epochs (data.step_indices, one position at a time)."""
  t = cfg.train
  cycle, batches = list(t.cycle), {k: dict(v) for k, v in t.batches.items()}
  rows = []
  for kind, count in sorted(batches[cycle[step % len(cycle)]].items()):
    pool = pools[kind]
    if not pool:
      raise ValueError(f"no {kind} rows to train on (no policy samples?)")
    first = consumed(cycle, batches, step, kind)
    seed = stable_seed(t.seed, kind)
    rows += [pool[data.step_indices(len(pool), p, 1, seed)[0]] for p in range(first, first + count)]
  return rows


def train_batch(policy: Policy, render, examples, rows, template=None) -> tuple[TrainBatch, int]:
  """The teacher-forcing batch of `rows` (target + <|im_end|>) and its response length."""
  prompts, images, responses = [], [], []
  eos = policy.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
  for row in rows:
    prompt, ims, target = expert_data.materialise(render, policy, examples[row.index], row, template)
    prompts.append(prompt)
    images.append(ims)
    responses.append(policy.processor.tokenize(target) + [eos])
  sb = policy.processor.scoring_batch(prompts, responses, images)
  batch = TrainBatch(**sb.batch.model_inputs(), response_mask=sb.response_mask.astype(np.float32))
  return batch, sb.response_len


def export(model, out_dir: pathlib.Path, processor_dir: pathlib.Path, dtype: str) -> pathlib.Path:
  """The HF export; `dtype` "bfloat16" rewrites the weights in bfloat16 (half the size)."""
  final = save_hf(model, out_dir, processor_dir=processor_dir)
  if dtype == "float32":
    return final
  if dtype != "bfloat16":
    raise ValueError(f"export.dtype {dtype!r}: expected float32 or bfloat16")
  bf16 = np.dtype(ml_dtypes.bfloat16)
  for file in sorted(final.glob("*.safetensors")):  # one file at these sizes
    src = safetensors_io.SafetensorsFile(file)
    arrays = {k: np.array(src.get(k), np.float32) for k in src.keys()}
    del src  # its memory map, before the file is rewritten
    safetensors_io.write(
      file, [(k, a.shape, bf16) for k, a in arrays.items()], lambda k, arrays=arrays: arrays[k].astype(bf16)
    )
  config = json.loads((final / "config.json").read_text())
  config["torch_dtype"] = config["dtype"] = "bfloat16"
  runs.write_text(final / "config.json", json.dumps(config, indent=2) + "\n")
  return final


def bundle_mb(path: pathlib.Path) -> float:
  return sum(p.stat().st_size for p in pathlib.Path(path).iterdir() if p.is_file()) / 1e6


def train(cfg, out: pathlib.Path) -> dict:
  """Run (or resume) the Expert's training of `cfg` into `out`, holding its lock (another run
  on it: runs.OutDirError at once); the summary is also written to out/report.json. A
  non-finite loss raises FloatingPointError (the update is not applied)."""
  out = pathlib.Path(out)
  with runs.locked(out):
    return _train(cfg, out)


def _train(cfg, out: pathlib.Path) -> dict:
  began = time.perf_counter()
  single_threaded_torch()
  seconds: dict[str, float] = {}
  p, d = cfg.policy, cfg.data
  runs.check_settings(out, {k: cfg[k.split(".")[0]][k.split(".")[1]] for k in SAMPLE_KEYS}, SAMPLE_KEYS)
  train_ds = data.load(d.benchmark, config=d.config, split=d.split, data_dir=d.data_dir)
  val_ds = data.load(d.benchmark, config=d.config, split=cfg.eval.split, data_dir=d.data_dir)
  examples = train_ds[: min(len(train_ds), d.problems)]
  val = val_ds[: min(len(val_ds), cfg.eval.size)]  # none when eval.size is 0

  t0 = time.perf_counter()
  kw = dict(n=p.n, temperature=p.temperature, max_new_tokens=p.max_new_tokens, seed=p.seed, batch=p.batch)
  solver = Lazy(lambda: load_policy(p.ckpt))  # loaded only if something is left to draw
  samples = draw_samples(solver, examples[: p.problems], out / "samples.jsonl", template=d.template, **kw)
  val_samples = draw_samples(solver, val, out / "val_samples.jsonl", template=d.template, **kw)
  seconds["samples"] = time.perf_counter() - t0

  path = model_dir(cfg, out, examples)
  model_cfg = ModelConfig.from_pretrained(path).replace(dtype=cfg.model.dtype)
  model = load_hf(path, model_cfg)
  expert = Policy(model, Processor(path, model_cfg, buckets_per_octave=cfg.model.buckets_per_octave))
  render = SelfExpert(expert).render
  learner = Learner(model, nll, OptimizerConfig(**cfg.optimizer.to_dict()))
  pools = expert_data.pools(examples, samples, seed=cfg.train.seed, voter_ns=tuple(cfg.rows.voter_ns))

  t = cfg.train
  checkpoints = Checkpointer(out / "checkpoints", keep=2, every=t.save_every)
  start = learner.resume(checkpoints)
  from tqdm import tqdm

  t0 = time.perf_counter()
  history = []
  build = lambda s: train_batch(expert, render, examples, step_rows(cfg, pools, s), d.template)  # noqa: E731
  with runs.appending(out / "train.jsonl") as write, ThreadPoolExecutor(1) as prefetch:
    pending = prefetch.submit(build, start) if start < t.steps else None
    for step in tqdm(range(start, t.steps), initial=start, total=t.steps, desc="expert"):
      batch, response_len = pending.result()
      if step + 1 < t.steps:  # the next batch is built while this step runs
        pending = prefetch.submit(build, step + 1)
      began_step = time.perf_counter()
      try:
        metrics = learner.step(batch, response_len)
      except FloatingPointError as e:
        checkpoints.wait()
        raise FloatingPointError(f"step {step}: {e}") from e
      record = {
        "step": step + 1,
        "batch": t.cycle[step % len(t.cycle)],
        "loss": metrics["loss"],
        "tokens": int(batch.input_ids.size),
        "seconds": time.perf_counter() - began_step,
      }
      checkpoints.save(step + 1, learner.params, learner.opt_state, {"step": step + 1})
      history.append(record)
      write(record)
  checkpoints.wait()
  seconds["train"] = time.perf_counter() - t0

  final = export(learner.model(), out / "final", path, cfg.export.dtype)
  evaluation = None
  if cfg.eval.size:
    t0 = time.perf_counter()
    trained = Policy.from_pretrained(final, buckets_per_octave=cfg.model.buckets_per_octave)
    evaluation = expert_eval.evaluate(
      trained, solver.get(), val, val_samples, cfg.eval, out / "eval.jsonl", d.template
    )
    seconds["eval"] = time.perf_counter() - t0
  seconds["total"] = time.perf_counter() - began
  summary = {
    "steps": t.steps,
    "resumed_from": start,
    "final_checkpoint": str(final),
    "bundle_mb": bundle_mb(final),
    "rows": {k: len(v) for k, v in pools.items()},
    "loss_first": history[0]["loss"] if history else None,
    "loss_last": history[-1]["loss"] if history else None,
    "eval": evaluation,
    "seconds": seconds,
    "config": cfg.to_dict(),
  }
  runs.write_json(out / "report.json", summary)
  return summary


def table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The printed summary: one row of figures on validation."""
  e = summary["eval"]
  if e is None:
    return [{"steps": summary["steps"], "mb": summary["bundle_mb"], "seconds": summary["seconds"]["total"]}]
  v, s = e["voter"], e["solve"]
  return [
    {
      "steps": summary["steps"],
      **{f"parse_{role}": rate for role, rate in e["parse_rate"].items()},
      "voter_acc": v["accuracy"],
      "majority_acc": v["majority_accuracy"],
      "expert_solve": s["expert"]["accuracy"],
      "policy_solve": s["policy"]["accuracy"],
      "mb": summary["bundle_mb"],
      "seconds": summary["seconds"]["total"],
    }
  ]
