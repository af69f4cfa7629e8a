"""A local Expert server: `transformers serve CKPT` on 127.0.0.1, started and stopped by a run.

  with serving(ckpt, log_path) as servers:
    (url,) = servers.urls()                  # "http://127.0.0.1:PORT", once it answers
    expert = make_expert(url + "/v1")

The real OpenAI-compatible path (the extra `serve` installs transformers[serving]); the port
is chosen free, the server's output goes to `log_path`, and it is stopped however the block
ends. HF_HUB_OFFLINE=1 in the server: it reads only the local checkpoint. `transformers serve`
answers one request at a time (also with --continuous-batching, which is for text models
only): `replicas=K` starts K servers, which `make_expert("URL,URL")` shares the calls among.

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


class Servers:
  """Started `transformers serve` processes; `urls()` waits until each answers."""

  def __init__(self, procs: list, ports: list[int], logs: list[pathlib.Path], timeout: float):
    self.procs, self.ports, self.logs = procs, ports, logs
    self.deadline = time.monotonic() + timeout
    self._urls: list[str] | None = None

  def urls(self) -> list[str]:
    """The base URLs (no /v1) once every server answers /health; ServerError quoting a log
    when a server exits or the start's `timeout` passes first."""
    while self._urls is None:
      waiting = [i for i, port in enumerate(self.ports) if not _healthy(port)]
      if not waiting:
        self._urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        break
      for i in waiting:
        if self.procs[i].poll() is not None or time.monotonic() > self.deadline:
          raise ServerError(f"transformers serve did not start:\n{self.logs[i].read_text()[-2000:]}")
      time.sleep(0.2)
    return self._urls


def _healthy(port: int) -> bool:
  try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
      return r.status == 200
  except OSError:
    return False


@contextlib.contextmanager
def serving(
  ckpt: str | pathlib.Path,
  log_path: str | pathlib.Path,
  timeout: float = 90,
  threads: int = 1,
  replicas: int = 1,
) -> Iterator[Servers]:
  """Serve `ckpt` on CPU from `replicas` processes, all started at once (each answers one
  request at a time); yields their `Servers` at once, so other work can run while they load.
  Logs: `log_path`, and LOG_2, LOG_3... beside it for the other replicas. Every process is
  stopped however the block ends."""
  for module in ("fastapi", "uvicorn"):
    try:
      __import__(module)
    except ImportError:
      raise ServerError(f"transformers serve needs {module}: pip install 'catts-jax[serve]'") from None
  log_path = pathlib.Path(log_path)
  logs = [log_path.with_stem(f"{log_path.stem}_{i + 1}") if i else log_path for i in range(replicas)]
  ports: list[int] = []
  while len(ports) < replicas:  # a port freed a moment ago can be handed out again
    port = free_port()
    if port not in ports:
      ports.append(port)
  procs = []
  env = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": str(threads),
    "MKL_NUM_THREADS": str(threads),
  }
  try:
    for path, port in zip(logs, ports):
      cli = [sys.executable, "-m", "transformers.cli.transformers"]  # the `transformers` command
      command = [*cli, "serve", str(ckpt), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
      with open(path, "wb") as log:
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
    yield Servers(procs, ports, logs, timeout)
  finally:
    for proc in procs:
      proc.terminate()
    for proc in procs:
      try:
        proc.wait(10)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
