"""An Expert from its spec: `make_expert("hf:<model-id>" | "http(s)://host/v1[,...]" | "self" | "none")`."""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable, Mapping

from catts_jax.tts.expert import NO_API_KEY, Expert, RemoteExpert, RetryPolicy
from catts_jax.tts.self_expert import SelfExpert


def _public_url(url: str) -> str:
  """The URL without user:password@ (a name that goes into records, logs and errors)."""
  try:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
  except ValueError:  # not a URL that parses: show no part of it that could hold a secret
    return "<an unparseable URL>"


def make_expert(
  spec: str,
  policy=None,
  *,
  timeout_s: float = 60.0,
  max_retries: int = 3,
  backoff_s: float = 1.0,
  max_backoff_s: float = 30.0,
  budget_s: float | None = None,
  failure_budget_s: float | None = None,
  jitter: float = 0.1,
  sleep: Callable[[float], None] = time.sleep,
  model: str | None = None,
  provider: str | None = None,
  api_key_env: str | None = None,
  seed: int = 0,
  decode: Mapping | None = None,
  batch: int = 0,
) -> Expert | None:
  """An expert from its spec:
  - "hf:<model-id>": Hugging Face Inference Providers with HF_TOKEN (`provider` picks one,
    default the router's choice);
  - "http(s)://host[:port]/v1": any OpenAI-compatible server; `model` names the served model
    (default: the one GET /v1/models lists), `api_key_env` the variable holding its API key;
    "URL,URL,...": replicas of one model, each call sent to the one with the fewest calls out;
  - "self": `policy` answers as the expert (`decode`: SamplingConfig fields for its decodes,
    `batch` prompts at most per decode);
  - "none": None (CA-TTS runs without expert roles).
  """
  text = str(spec).strip()
  retry = RetryPolicy(
    max_retries, backoff_s, max_backoff_s, jitter, sleep, budget_s=budget_s, failure_budget_s=failure_budget_s
  )
  if text.lower() == "none":
    return None
  if text.lower() == "self":
    if policy is None:
      raise ValueError("expert spec 'self' needs the policy")
    return SelfExpert(policy, seed, decode, batch)
  from huggingface_hub import InferenceClient

  if text.startswith("hf:") and len(text) > 3 and " " not in text:
    token = os.environ.get("HF_TOKEN")
    if not token:
      raise ValueError(f"expert spec {text!r} needs the HF_TOKEN environment variable")
    client = InferenceClient(model=text[3:], token=token, timeout=timeout_s, provider=provider)
    return RemoteExpert(text, client, api_key=token, timeout_s=timeout_s, retry=retry)
  given = [u.strip() for u in text.split(",")]
  urls = [u.rstrip("/") for u in given]
  if all(u.startswith(("http://", "https://")) and urllib.parse.urlsplit(u).hostname for u in urls):
    for url in urls:
      if "@" in urllib.parse.urlsplit(url).netloc:
        raise ValueError(
          f"expert URL {_public_url(url)} carries credentials: put the key in an environment variable "
          "and name it with --config.expert.api_key_env (a URL's credentials would be sent and logged)"
        )
    api_key = None
    if api_key_env:
      api_key = os.environ.get(api_key_env)
      if not api_key:
        raise ValueError(f"expert spec {text!r}: environment variable {api_key_env} is not set")
    models_url = (urls[0] if urls[0].endswith("/v1") else urls[0] + "/v1") + "/models"
    first, *replicas = (
      InferenceClient(base_url=u, token=api_key or NO_API_KEY, timeout=timeout_s) for u in urls
    )
    return RemoteExpert(
      ",".join(map(_public_url, given)), first, replicas=replicas, model=model, models_url=models_url,
      api_key=api_key, timeout_s=timeout_s, retry=retry,
    )  # fmt: skip
  raise ValueError(
    f"unknown expert spec {_public_url(text)!r}: use hf:<model-id>, http(s)://host[:port]/v1, self or none"
  )
