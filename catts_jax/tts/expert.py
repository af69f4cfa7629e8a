"""The CA-TTS Expert's client: one chat model behind a name, with retries and call records.
The roles it plays are planner.py, voter.py and critic.py.

  expert = make_expert("hf:Qwen/Qwen2.5-VL-72B-Instruct")  # HF Inference Providers, HF_TOKEN
  expert = make_expert("http://127.0.0.1:8000/v1")          # vLLM, TGI, `transformers serve`
  expert = make_expert("self", policy)                       # the policy itself (self_expert.py)
  # (make_expert: expert_spec.py)
  text, call = expert.complete([system_message(...), user_message(text, images)], role="voter")
  results = expert.ask_many([voter.vote_ask(...), critic.critique_ask(...)], concurrency=8)

Messages are OpenAI chat messages, images as PNG data URLs (`user_message`). Remote calls
time out, retry 429 / 5xx / connection errors / timeouts / garbled bodies with exponential
backoff and jitter, and fail as one `ExpertError` carrying the call's record; every
`ExpertCall` is a flat dict for results.jsonl. A role's request is an `Ask` (messages, decoding
settings and how to read the reply); `ask_many` answers many at once: remote experts from a
bounded pool of threads, the `self` expert in one batched decode. Secrets (HF_TOKEN, API keys) never reach
records, messages or logs: error texts are redacted and exceptions are not chained.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import random
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from catts_jax.images import open_image, to_rgb

logger = logging.getLogger(__name__)

# Sent as the bearer token to OpenAI-compatible servers that need none: without it
# huggingface_hub would send the user's own HF token to whatever server the URL names.
NO_API_KEY = "EMPTY"
IMAGE_MAX_SIDE = 2048  # larger images are shrunk before upload (request size limits)
ERROR_MAX_CHARS = 200
OUTPUT_MAX_CHARS = 300  # raw output kept in a record when it could not be parsed


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


def image_url(image: Image.Image, max_side: int = IMAGE_MAX_SIDE) -> str:
  """A PNG data URL of `image`, shrunk so that its longer side is at most `max_side`."""
  image = to_rgb(image, name="expert image")  # what the policy sees: alpha over white, 16-bit scaled
  if max(image.size) > max_side:
    image = image.copy()
    image.thumbnail((max_side, max_side))
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image_url(url: str) -> Image.Image:
  """The RGB image of a base64 data URL (the only kind the `self` expert can read)."""
  head, sep, data = url.partition(",")
  if not (url.startswith("data:") and sep and head.endswith(";base64")):
    raise ValueError(f"only base64 data URLs can be read locally, got {url[:40]!r}")
  return open_image(base64.b64decode(data), name="image data URL")


def user_message(text: str, images: Sequence[Image.Image] = ()) -> dict:
  """A user turn: the images first (as Qwen-VL prompts place them), then the text."""
  parts = [{"type": "image_url", "image_url": {"url": image_url(im)}} for im in images]
  return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def system_message(text: str) -> dict:
  return {"role": "system", "content": text}


# ---------------------------------------------------------------------------
# Records and errors
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ExpertCall:
  """One expert call as it goes to results.jsonl. `ok` is False when the call failed or its
  output was unusable; `fallback` means a default replaced an unparseable answer (planner),
  with `reason`; `output` keeps the start of an output that could not be parsed.
  latency_s covers all attempts and the waits between them."""

  role: str
  ok: bool
  latency_s: float
  attempts: int
  error: str | None = None
  expert: str = ""
  fallback: bool = False
  reason: str | None = None
  output: str | None = None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class ExpertError(RuntimeError):
  """A call that failed after its retries (or whose output was unusable); `record` says why."""

  def __init__(self, record: ExpertCall):
    super().__init__(f"expert {record.role} call failed after {record.attempts} attempt(s): {record.error}")
    self.record = record


# Bugs in this code, not trouble with the Expert: they propagate (the run stops with their
# traceback) instead of becoming a failed call that costs a vote and leaves the run "done".
PROGRAMMING_ERRORS = (ImportError, NameError, TypeError, AttributeError, AssertionError, NotImplementedError)


class Retryable(Exception):
  """A failed attempt worth repeating (transient server or network trouble)."""

  def __init__(self, message: str, wait_s: float | None = None):
    super().__init__(message)
    self.wait_s = wait_s  # the server's Retry-After, if it sent one


class Fatal(Exception):
  """A failed attempt that repeating will not fix (bad request, auth, offline mode)."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """Attempt k (1-based) that fails transiently waits backoff_s * 2**(k-1), at least the
  server's Retry-After, at most max_backoff_s, times a random factor in [1, 1 + jitter).
  A call stops retrying when the next wait would take it past `budget_s` seconds; once failed
  calls have cost `failure_budget_s` seconds in all, the Expert is taken for dead and every
  later call fails at once (None: no limit)."""

  max_retries: int = 3
  backoff_s: float = 1.0
  max_backoff_s: float = 30.0
  jitter: float = 0.1
  sleep: Callable[[float], None] = time.sleep
  rng: random.Random = dataclasses.field(default_factory=random.Random)
  budget_s: float | None = None
  failure_budget_s: float | None = None

  def delay(self, attempt: int, wait_s: float | None = None) -> float:
    base = self.backoff_s * 2 ** (attempt - 1)
    if wait_s is not None:
      base = max(base, wait_s)
    return min(base, self.max_backoff_s) * (1 + self.jitter * self.rng.random())


@dataclasses.dataclass(frozen=True)
class Ask:
  """One role's request: the messages, how to decode, and how to read the reply:
  `read(expert, text, call)` -> (result, call), raising `expert.unusable(...)` when the reply
  cannot be used."""

  role: str
  messages: list[dict]
  max_tokens: int
  temperature: float
  read: Callable[[Expert, str, ExpertCall], tuple[Any, ExpertCall]]


def shorten(text: str, limit: int = ERROR_MAX_CHARS) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Experts
# ---------------------------------------------------------------------------


class Expert:
  """A chat model. Subclasses implement `_send` (one attempt) and may raise Retryable or
  Fatal; PROGRAMMING_ERRORS propagate; any other exception counts as Fatal."""

  name = "expert"
  # True: `ask_many` answers a list in one batched decode, so a caller hands over lists (the
  # `self` expert); False: calls are independent, best sent one by one as they arise.
  batches = False

  def __init__(self, retry: RetryPolicy | None = None, secrets: Sequence[str] = ()):
    self.retry = retry or RetryPolicy()
    self._secrets = tuple(s for s in secrets if s)
    self.last_call: ExpertCall | None = None
    self.failed_s = 0.0  # seconds spent on calls that failed (`RetryPolicy.failure_budget_s`)
    self._failed_lock = threading.Lock()

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r})"

  def _send(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
    raise NotImplementedError

  def redact(self, text: str) -> str:
    for secret in self._secrets:
      text = text.replace(secret, "***")
    return text

  def excerpt(self, text: str) -> str:
    """The start of a reply, secrets removed, for a record."""
    return self.redact(text)[:OUTPUT_MAX_CHARS]

  def complete(
    self, messages: Sequence[Mapping], max_tokens: int = 512, temperature: float = 0.0, role: str = "chat"
  ) -> tuple[str, ExpertCall]:
    """The reply text and the call's record; ExpertError (with the record) on failure."""
    start, attempt = time.monotonic(), 0
    limit = self.retry.failure_budget_s
    if limit is not None and self.failed_s >= limit:
      error = f"expert taken for dead: failed calls used its {limit:g} s failure budget"
      self.last_call = call = ExpertCall(role, False, 0.0, 0, error, self.name)
      raise ExpertError(call)
    while True:
      attempt += 1
      try:
        text = self._send(list(messages), max_tokens, temperature)
        call = ExpertCall(role, True, time.monotonic() - start, attempt, expert=self.name)
        self.last_call = call  # a local first: calls on other threads set it too
        return text, call
      except PROGRAMMING_ERRORS:
        raise
      except Exception as e:  # noqa: BLE001 - every other failure becomes a record
        failure = e
      # Handled outside the except block, so no error chains to one that may quote secrets.
      known = isinstance(failure, Retryable | Fatal)
      # Redact before shortening: a cut could leave part of a secret.
      error = shorten(self.redact(str(failure) if known else f"{type(failure).__name__}: {failure}"))
      wait = self.retry.delay(attempt, failure.wait_s) if isinstance(failure, Retryable) else 0.0
      budget = self.retry.budget_s
      over = budget is not None and time.monotonic() - start + wait > budget
      if not isinstance(failure, Retryable) or attempt > self.retry.max_retries or over:
        if over and isinstance(failure, Retryable) and attempt <= self.retry.max_retries:
          error = shorten(f"{error} (no retry: the call's {budget:g} s budget would pass)")
        call = ExpertCall(role, False, time.monotonic() - start, attempt, error, self.name)
        with self._failed_lock:
          self.failed_s += call.latency_s
        self.last_call = call
        logger.warning("expert %s: %s call failed after %d attempt(s): %s", self.name, role, attempt, error)
        raise ExpertError(call)
      logger.warning(
        "expert %s: %s attempt %d failed (%s); retrying in %.1f s", self.name, role, attempt, error, wait
      )
      self.retry.sleep(wait)

  def ask(self, ask: Ask) -> tuple[Any, ExpertCall]:
    """A role's result and the call's record; ExpertError when the call fails or its reply is
    unusable."""
    text, call = self.complete(ask.messages, ask.max_tokens, ask.temperature, role=ask.role)
    return ask.read(self, text, call)

  def ask_many(self, asks: Sequence[Ask], concurrency: int = 1) -> list[tuple[Any, ExpertCall] | Exception]:
    """Each ask's (result, call), or the exception it raised (an ExpertError when the call
    failed or its reply was unusable), in order; up to `concurrency` calls in flight at once
    (a slow or failing call holds up no other). PROGRAMMING_ERRORS propagate."""

    if len(asks) <= 1 or concurrency <= 1:
      return [self.answer(a) for a in asks]
    with ThreadPoolExecutor(min(concurrency, len(asks)), thread_name_prefix="expert") as pool:
      return list(pool.map(self.answer, asks))

  def answer(self, ask: Ask) -> tuple[Any, ExpertCall] | Exception:
    """`ask`'s (result, call), or the exception it raised; PROGRAMMING_ERRORS propagate."""
    try:
      return self.ask(ask)
    except PROGRAMMING_ERRORS:
      raise
    except Exception as e:  # noqa: BLE001 - returned to the problem that asked
      return e

  def chat(self, messages: Sequence[Mapping], max_tokens: int = 512, temperature: float = 0.0) -> str:
    """The reply text; the record is in `last_call` (also on ExpertError)."""
    return self.complete(messages, max_tokens, temperature)[0]

  def unusable(self, call: ExpertCall, error: str, text: str) -> ExpertError:
    """The error for a call that worked but whose reply a role cannot use: the record marked
    failed, with `error` and the reply's start (also in `last_call`)."""
    record = dataclasses.replace(call, ok=False, error=error, output=self.excerpt(text))
    self.last_call = record
    logger.warning("expert %s: %s: %s", self.name, call.role, error)
    return ExpertError(record)


def _status_error(e: Exception) -> Exception:
  """An HTTP error response as Retryable (429, 5xx) or Fatal (other 4xx)."""
  response = e.response
  status = response.status_code
  try:
    detail = shorten(response.text, 120)
  except Exception:  # noqa: BLE001 - a streamed body may be unreadable
    detail = ""
  message = f"HTTP {status}" + (f": {detail}" if detail else "")
  if status == 429 or status >= 500:
    try:
      wait = float(response.headers.get("retry-after"))
    except (TypeError, ValueError):
      wait = None
    return Retryable(message, wait)
  return Fatal(message)


class RemoteExpert(Expert):
  """An OpenAI-compatible chat endpoint through `huggingface_hub.InferenceClient`; with
  `replicas` (more clients of the same model), each call goes to the client with the fewest
  calls in flight (servers that answer one request at a time, like `transformers serve`)."""

  def __init__(
    self,
    name: str,
    client,
    *,
    replicas: Sequence = (),
    model: str | None = None,
    models_url: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    retry: RetryPolicy | None = None,
  ):
    super().__init__(retry, secrets=[api_key] if api_key else ())
    self.name = name
    self.client = client
    self._clients = (client, *replicas)
    self._in_flight = [0] * len(self._clients)  # calls out per client
    self._clients_lock = threading.Lock()
    self.model = model
    self.timeout_s = timeout_s
    self._models_url = models_url  # asked once for the served model's name, when model is None
    self._api_key = api_key

  def _payload_model(self) -> str | None:
    """The `model` field: given, or the served model's id from GET /v1/models (servers
    pinned to one model, like `transformers serve DIR` and vLLM, reject any other name)."""
    if self.model is None and self._models_url is not None:
      request = urllib.request.Request(self._models_url)
      if self._api_key:
        request.add_header("Authorization", f"Bearer {self._api_key}")
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          ids = [m["id"] for m in json.loads(response.read())["data"]]
        self.model = ids[0] if ids else None
        self._models_url = None  # asked and answered: do not ask again
      except Exception as e:  # noqa: BLE001 - the chat call reports the real trouble
        logger.debug("expert %s: model list unavailable (%s)", self.name, type(e).__name__)
    return self.model

  def _send(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled

    model = self._payload_model()
    with self._clients_lock:
      i = self._in_flight.index(min(self._in_flight))
      self._in_flight[i] += 1
    try:
      out = self._clients[i].chat_completion(
        messages, model=model, max_tokens=max_tokens, temperature=temperature
      )
    except (InferenceTimeoutError, httpx2.TimeoutException, TimeoutError):
      raise Retryable(f"timeout after {self.timeout_s:g} s") from None
    except OfflineModeIsEnabled:
      raise Fatal("HF_HUB_OFFLINE is set, which blocks huggingface_hub's client: unset it") from None
    except HfHubHTTPError as e:
      if e.response is None:
        raise Retryable(f"HTTP error: {e}") from None
      raise _status_error(e) from None
    except (httpx2.TransportError, ConnectionError) as e:
      raise Retryable(f"connection error: {type(e).__name__}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a garbled or cut-off body
      raise Retryable(f"malformed response: {type(e).__name__}") from None
    finally:
      with self._clients_lock:
        self._in_flight[i] -= 1
    try:
      content = out.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
      raise Retryable("malformed response: no choices[0].message") from None
    if isinstance(content, list):  # some servers answer in content parts
      content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""
