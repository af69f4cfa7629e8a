"""A local Expert server: `transformers serve CKPT` on 127.0.0.1, started and stopped by a run.

  with serving(ckpt, log_path) as url:       # "http://127.0.0.1:PORT"
    expert = make_expert(url + "/v1")

The real OpenAI-compatible path (the extra `serve` installs transformers[serving]); the port
is chosen free, the server's output goes to `log_path`, and it is stopped however the block
ends. HF_HUB_OFFLINE=1 in the server: it reads only the local checkpoint.

The server's torch runs `threads` threads (default 1): beside the JAX process that sends the
requests, torch's default pool (one thread per core) fought XLA's for the same 2 cores and
the tiny Expert generated 17 tokens/s; on one thread, 32 Voter calls took 2.2 s instead of 47.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class ServerError(RuntimeError):
  """The server could not start (its log's end is in the message)."""


@contextlib.contextmanager
def serving(
  ckpt: str | pathlib.Path, log_path: str | pathlib.Path, timeout: float = 90, threads: int = 1
) -> Iterator[str]:
  """Serve `ckpt` on CPU; yields the base URL (no /v1). A server that does not answer /health
  within `timeout` seconds, or exits, is a ServerError quoting the end of its log."""
  for module in ("fastapi", "uvicorn"):
    try:
      __import__(module)
    except ImportError:
      raise ServerError(f"transformers serve needs {module}: pip install 'catts-jax[serve]'") from None
  log_path = pathlib.Path(log_path)
  port = free_port()
  cli = [sys.executable, "-m", "transformers.cli.transformers"]  # the `transformers` command
  command = [*cli, "serve", str(ckpt), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(
      command,
      stdout=log,
      stderr=subprocess.STDOUT,
      env={
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
      },
    )
  url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
  try:
    while True:
      try:
        with urllib.request.urlopen(url + "/health", timeout=1) as r:
          if r.status == 200:
            break
      except OSError:
        pass
      if proc.poll() is not None or time.monotonic() > deadline:
        raise ServerError(f"transformers serve did not start:\n{log_path.read_text()[-2000:]}")
      time.sleep(0.2)
    yield url
  finally:
    proc.terminate()
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
