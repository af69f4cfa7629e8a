"""Train 3 steps as process PID of N (jax.distributed over CPU, gloo) on one global batch
(every process passes all of it; each of its devices takes its rows).

python distributed_worker.py CKPT PORT PID N  -> prints "losses <l1> <l2> <l3>"
With N == 1 it runs alone on 2 local devices with the whole batch (the reference).
"""

import os
import sys

ckpt, port, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={2 if n == 1 else 1}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
if n > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n, process_id=pid)

from catts_jax import sharding  # noqa: E402
from catts_jax.models.qwen2_5_vl import load_hf  # noqa: E402
from catts_jax.processing import Processor  # noqa: E402
from catts_jax.rl.batch import TrainBatch  # noqa: E402
from catts_jax.rl.grpo import LossConfig  # noqa: E402
from catts_jax.rl.learner import Learner, OptimizerConfig  # noqa: E402

mesh = sharding.make_mesh({"data": 2})
processor = Processor(ckpt)
rng = np.random.default_rng(0)
prompts = [processor.chat_prompt(f"question number {i}") for i in range(4)]
sb = processor.scoring_batch(prompts, [rng.integers(0, 500, 5 + i).tolist() for i in range(4)])
mask = sb.response_mask.astype(np.float32)
old = (-rng.exponential(3.0, mask.shape)).astype(np.float32) * mask
batch = TrainBatch(
  **sb.batch.model_inputs(),
  old_logp=old,
  ref_logp=old,
  response_mask=mask,
  advantages=rng.normal(0, 1, 4).astype(np.float32),
)
learner = Learner(
  load_hf(ckpt, mesh=mesh), LossConfig(kl_coef=0.01), OptimizerConfig(learning_rate=1e-4), mesh=mesh
)
losses = [learner.step(batch, sb.response_len)["loss"] for _ in range(3)]
print("losses", *(f"{x:.8f}" for x in losses))
if n > 1:
  jax.distributed.shutdown()
