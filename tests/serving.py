"""Experts for tests: `transformers serve` on 127.0.0.1 as a real OpenAI-compatible server, and
`Replies`, an in-process expert that answers from a script."""

import contextlib

import pytest

from catts_jax.tts.expert import Expert, RetryPolicy
from catts_jax.tts.serve import free_port, serving  # noqa: F401 - free_port for tests


@contextlib.contextmanager
def transformers_serve(ckpt, log_path, timeout: float = 90):
  """Serve `ckpt` on CPU (extra transformers[serving]); yields the base URL (no /v1)."""
  pytest.importorskip("fastapi")
  pytest.importorskip("uvicorn")
  with serving(ckpt, log_path, timeout) as servers:
    yield servers.urls()[0]


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
