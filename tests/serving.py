"""Experts for tests: `transformers serve` on 127.0.0.1 as a real OpenAI-compatible server, and
`Replies`, an in-process expert that answers from a script."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from catts_jax.tts.expert import Expert, RetryPolicy


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(ckpt, log_path, timeout: float = 90):
  """Serve `ckpt` on CPU (extra transformers[serving]); yields the base URL (no /v1)."""
  pytest.importorskip("fastapi")
  pytest.importorskip("uvicorn")
  port = free_port()
  cli = [sys.executable, "-m", "transformers.cli.transformers"]  # the `transformers` command
  command = [*cli, "serve", str(ckpt), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(
      command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
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
        raise RuntimeError(f"transformers serve did not start:\n{log_path.read_text()[-2000:]}")
      time.sleep(0.2)
    yield url
  finally:
    proc.terminate()
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


class Replies(Expert):
  """Replies from a script, in turn, and keeps the messages (`sent`) and (max_tokens,
  temperature) (`options`) of each call; an Exception reply is raised. No retries."""

  name = "fake"

  def __init__(self, *replies, secrets=()):
    super().__init__(RetryPolicy(max_retries=0), secrets)
    self.replies, self.sent, self.options = list(replies), [], []

  def _send(self, messages, max_tokens, temperature):
    self.sent.append(messages)
    self.options.append((max_tokens, temperature))
    reply = self.replies.pop(0)
    if isinstance(reply, Exception):
      raise reply
    return reply
