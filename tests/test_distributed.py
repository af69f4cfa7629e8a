"""Two processes on localhost (jax.distributed, CPU) train together and agree on the loss."""

import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def losses(out: str) -> list[float]:
  line = next(x for x in out.splitlines() if x.startswith("losses "))
  return [float(v) for v in line.split()[1:]]


def test_two_processes_agree_with_one(tiny_ckpt):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  port = free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, str(WORKER), str(tiny_ckpt), str(port), str(i), "2"],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  a, b = losses(outs[0][0]), losses(outs[1][0])
  assert a == b and len(a) == 3 and a[0] != a[2]
  alone = subprocess.run(
    [sys.executable, str(WORKER), str(tiny_ckpt), "0", "0", "1"],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert alone.returncode == 0, alone.stderr[-3000:]
  for x, y in zip(a, losses(alone.stdout)):
    assert abs(x - y) <= 1e-5
