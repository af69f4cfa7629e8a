"""A small CDRL-style training loop for the resume test: python resume_worker.py CKPT RUN_DIR STEPS [KILL_AT].

Every step's batch comes from the step number (the data position), params/opt state/record
are checkpointed after each step, and a run starts from the latest complete checkpoint. With
KILL_AT the process SIGKILLs itself right after starting the asynchronous save of that step.
"""

import os
import signal
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from catts_jax.checkpoint import Checkpointer  # noqa: E402
from catts_jax.models.qwen2_5_vl import load_hf  # noqa: E402
from catts_jax.processing import Processor  # noqa: E402
from catts_jax.rl.batch import TrainBatch  # noqa: E402
from catts_jax.rl.grpo import LossConfig  # noqa: E402
from catts_jax.rl.learner import Learner, OptimizerConfig  # noqa: E402


def batch_for(processor, step):
  rng = np.random.default_rng(step)
  prompts = [processor.chat_prompt(f"question {step} {i}") for i in range(4)]
  responses = [rng.integers(0, 500, 6).tolist() for _ in prompts]
  sb = processor.scoring_batch(prompts, responses)
  r = sb.response_len
  mask = sb.response_mask.astype(np.float32)
  old = (-rng.exponential(3.0, (4, r))).astype(np.float32) * mask
  return TrainBatch(
    **sb.batch.model_inputs(),
    old_logp=old,
    ref_logp=old,
    response_mask=mask,
    advantages=rng.normal(0, 1, 4).astype(np.float32),
  ), r


def main(ckpt, run_dir, steps, kill_at=None):
  jax.config.update("jax_default_matmul_precision", "highest")
  processor = Processor(ckpt)
  learner = Learner(
    load_hf(ckpt), LossConfig(kl_coef=0.01), OptimizerConfig(learning_rate=1e-3, warmup_steps=2)
  )
  ckpt_mgr = Checkpointer(run_dir, keep=2)
  start = 0
  restored = ckpt_mgr.restore(learner.params, learner.opt_state)
  if restored is not None:
    learner.params, learner.opt_state, record = restored
    start = record["data_position"]
  for step in range(start, steps):
    learner.step(*batch_for(processor, step))
    ckpt_mgr.save(step + 1, learner.params, learner.opt_state, {"data_position": step + 1})
    if kill_at is not None and step + 1 == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)  # mid-save: the async write has just begun
  ckpt_mgr.wait()
  np.savez(os.path.join(run_dir, "final.npz"), *[np.asarray(x) for x in jax.tree.leaves(learner.params)])
  print("started at", start)


if __name__ == "__main__":
  args = sys.argv[1:]
  main(args[0], args[1], int(args[2]), int(args[3]) if len(args) > 3 else None)
