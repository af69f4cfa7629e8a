"""The CA-TTS Expert's client: specs, retries against a real local HTTP server, secrets, the
policy as its own expert, and the roles run against `transformers serve`."""

import dataclasses
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image
from serving import transformers_serve
from tiny_hf import random_image

from catts_jax.tts import expert as ex
from catts_jax.tts import planner
from catts_jax.tts.critic import critique
from catts_jax.tts.expert_spec import make_expert
from catts_jax.tts.self_expert import SelfExpert
from catts_jax.tts.voter import vote

FAKE_TOKEN = "hf_FAKEsecret0123456789abcdef"
IMAGE = Image.new("RGB", (40, 30), (200, 30, 30))


# --- a scripted OpenAI-compatible server ------------------------------------------------------


def completion(content):
  return {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
  ]}  # fmt: skip


class Scripted:
  """POST .../chat/completions answers with the next scripted action (the last one repeats):
  ("ok", content) | ("status", code, body, headers) | ("sleep", seconds) | ("raw", bytes).
  Every request is recorded (path, authorization, JSON body)."""

  def __init__(self, actions, models=("served-model",)):
    self.actions, self.models, self.requests = list(actions), models, []
    owner = self

    class Handler(BaseHTTPRequestHandler):
      def log_message(self, *args):  # keep test output quiet
        pass

      def reply(self, code, body: bytes, headers=()):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
          self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

      def do_GET(self):
        if self.path.endswith("/v1/models") and owner.models is not None:
          self.reply(200, json.dumps({"data": [{"id": m} for m in owner.models]}).encode())
        else:
          self.reply(404, b'{"error": "not found"}')

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        owner.requests.append((self.path, self.headers.get("Authorization"), body))
        action = owner.actions.pop(0) if len(owner.actions) > 1 else owner.actions[0]
        try:
          if action[0] == "ok":
            self.reply(200, json.dumps(completion(action[1])).encode())
          elif action[0] == "status":
            self.reply(action[1], action[2].encode(), action[3] if len(action) > 3 else ())
          elif action[0] == "sleep":
            time.sleep(action[1])
            self.reply(200, json.dumps(completion("late")).encode())
          elif action[0] == "raw":
            self.reply(200, action[1])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
          pass

    self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  def close(self):
    self.server.shutdown()
    self.server.server_close()


@pytest.fixture
def serve(monkeypatch):
  """Start scripted servers; huggingface_hub's offline mode (set by conftest) would block
  even local requests."""
  import huggingface_hub.constants

  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  servers = []

  def start(*actions, **kwargs):
    servers.append(Scripted(actions, **kwargs))
    return servers[-1]

  yield start
  for s in servers:
    s.close()


class Sleeps(list):
  def __call__(self, seconds):
    self.append(seconds)


def remote(url, sleeps=None, **options):
  return make_expert(url + "/v1", sleep=sleeps if sleeps is not None else Sleeps(), **options)


MESSAGES = [ex.system_message("be brief"), ex.user_message("What colour is it?", [IMAGE])]


# --- retries, timeouts, errors ----------------------------------------------------------------


def test_500_then_ok_retries_once_with_backoff(serve):
  server = serve(("status", 500, '{"error": "boom"}'), ("ok", "red"))
  sleeps = Sleeps()
  expert = remote(server.url, sleeps, jitter=0.1)
  text, call = expert.complete(MESSAGES, 16, 0.0, role="critic")
  assert text == "red"
  assert (call.ok, call.attempts, call.role, call.error) == (True, 2, "critic", None)
  assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 1.1
  assert expert.last_call == call
  # The request is an OpenAI chat request with the image as a PNG data URL.
  path, _, body = server.requests[-1]
  assert path == "/v1/chat/completions"
  assert body["model"] == "served-model"  # from GET /v1/models
  assert (body["max_tokens"], body["temperature"]) == (16, 0.0)
  image_part = body["messages"][1]["content"][0]
  assert image_part["type"] == "image_url"
  assert image_part["image_url"]["url"].startswith("data:image/png;base64,")


def test_always_500_fails_after_retries_with_exponential_backoff(serve):
  server = serve(("status", 503, "overloaded"))
  sleeps = Sleeps()
  expert = remote(server.url, sleeps, max_retries=3, backoff_s=0.5, jitter=0.2)
  with pytest.raises(ex.ExpertError) as info:
    expert.complete(MESSAGES, role="voter")
  record = info.value.record
  assert (record.ok, record.attempts, record.role) == (False, 4, "voter")
  assert record.error.startswith("HTTP 503")
  assert len(server.requests) == 4
  for got, base in zip(sleeps, [0.5, 1.0, 2.0], strict=True):
    assert base <= got <= base * 1.2
  assert "after 4 attempt(s)" in str(info.value)
  assert expert.last_call is record
  assert json.loads(json.dumps(record.to_dict()))["attempts"] == 4


def test_a_call_stops_retrying_before_its_budget_passes(serve):
  server = serve(("status", 503, "overloaded"))
  sleeps = Sleeps()
  expert = remote(server.url, sleeps, max_retries=3, backoff_s=1.0, jitter=0.0, budget_s=2.5)
  with pytest.raises(ex.ExpertError) as info:
    expert.complete(MESSAGES, role="voter")
  # Waits 1 and 2 fit in 2.5 s; the third (4 s) would not: 3 attempts, not 4.
  assert sleeps == [1.0, 2.0] and info.value.record.attempts == 3 and len(server.requests) == 3
  assert "no retry: the call's 2.5 s budget would pass" in info.value.record.error


def test_a_dead_expert_fails_at_once_after_its_failure_budget(serve):
  """A dead Expert costs at most failure_budget_s of the run: later calls fail at once, each
  recorded, and the server sees no more requests."""
  server = serve(("status", 503, "overloaded"))
  expert = remote(server.url, max_retries=1, failure_budget_s=1e-9)
  with pytest.raises(ex.ExpertError):
    expert.complete(MESSAGES, role="voter")
  assert len(server.requests) == 2 and expert.failed_s > 0
  for role in ("critic", "planner"):
    with pytest.raises(ex.ExpertError) as info:
      expert.complete(MESSAGES, role=role)
    record = info.value.record
    assert (record.role, record.ok, record.attempts) == (role, False, 0)
    assert record.error.startswith("expert taken for dead: failed calls used its 1e-09 s failure budget")
  assert len(server.requests) == 2
  # A working call costs nothing of the budget.
  ok = serve(("ok", "red"))
  expert = remote(ok.url, failure_budget_s=1e-9)
  assert [expert.chat(MESSAGES) for _ in range(3)] == ["red"] * 3 and expert.failed_s == 0


def test_429_honours_retry_after_and_caps_the_wait(serve):
  server = serve(("status", 429, "slow down", [("Retry-After", "7")]), ("ok", "fine"))
  sleeps = Sleeps()
  text, call = remote(server.url, sleeps, jitter=0.0, max_backoff_s=5.0).complete(MESSAGES)
  assert (text, call.attempts) == ("fine", 2)
  assert sleeps == [5.0]  # Retry-After 7 s, capped at max_backoff_s


def test_other_4xx_is_not_retried(serve):
  server = serve(("status", 400, '{"detail": "bad request"}'))
  sleeps = Sleeps()
  with pytest.raises(ex.ExpertError) as info:
    remote(server.url, sleeps).complete(MESSAGES)
  assert info.value.record.attempts == 1 and sleeps == []
  assert info.value.record.error.startswith("HTTP 400") and "bad request" in info.value.record.error


def test_timeout_is_retried_then_fails(serve):
  server = serve(("sleep", 3.0))
  start = time.monotonic()
  with pytest.raises(ex.ExpertError) as info:
    remote(server.url, timeout_s=0.3, max_retries=1).complete(MESSAGES)
  assert time.monotonic() - start < 2.5  # did not wait for the slow server
  assert info.value.record.attempts == 2
  assert info.value.record.error == "timeout after 0.3 s"


def test_malformed_body_is_retried(serve):
  server = serve(("raw", b"<html>bad gateway"), ("raw", b'{"choices": []}'), ("ok", "at last"))
  text, call = remote(server.url).complete(MESSAGES)
  assert (text, call.attempts) == ("at last", 3)


def test_connection_refused_is_retried(serve):
  with socket.socket() as s:  # a port with nobody listening
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  sleeps = Sleeps()
  with pytest.raises(ex.ExpertError) as info:
    remote(f"http://127.0.0.1:{port}", sleeps, max_retries=2).complete(MESSAGES)
  assert info.value.record.attempts == 3 and len(sleeps) == 2
  assert info.value.record.error.startswith("connection error")


def test_model_field_given_or_discovered(serve):
  server = serve(("ok", "x"), models=None)  # no /v1/models: huggingface_hub sends a placeholder
  remote(server.url).chat(MESSAGES)
  assert server.requests[-1][2]["model"] == "dummy"
  remote(server.url, model="pinned").chat(MESSAGES)
  assert server.requests[-1][2]["model"] == "pinned"


def test_offline_mode_is_a_clear_unretried_error(serve, monkeypatch):
  import huggingface_hub.constants

  server = serve(("ok", "x"))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(ex.ExpertError, match="HF_HUB_OFFLINE") as info:
    remote(server.url).complete(MESSAGES)
  assert info.value.record.attempts == 1 and not server.requests


# --- secrets ----------------------------------------------------------------------------------


def assert_secret_absent(secret, *texts):
  for text in texts:
    assert secret not in text


def test_hf_token_never_leaks(serve, monkeypatch, caplog):
  """hf: goes through the Inference Providers router (pointed at the local server here); the
  server echoes the token in its error bodies, which reach the logs and the error."""
  from huggingface_hub.inference import _providers

  caplog.set_level(logging.DEBUG)
  monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
  echo = f'{{"error": "invalid token Bearer {FAKE_TOKEN}"}}'
  server = serve(("status", 502, echo), ("ok", "fine"), ("status", 401, echo))
  monkeypatch.setattr(_providers.CONVERSATIONAL_AUTO_ROUTER, "base_url", server.url)
  expert = make_expert("hf:org/some-vlm", sleep=Sleeps())
  text, call = expert.complete(MESSAGES)
  assert (text, call.attempts, call.expert) == ("fine", 2, "hf:org/some-vlm")
  path, auth, body = server.requests[-1]
  assert (path, auth, body["model"]) == ("/v1/chat/completions", f"Bearer {FAKE_TOKEN}", "org/some-vlm")
  with pytest.raises(ex.ExpertError) as info:
    expert.complete(MESSAGES)
  record = info.value.record
  assert record.attempts == 1 and record.error.startswith("HTTP 401") and "***" in record.error
  assert info.value.__cause__ is None and info.value.__context__ is None  # nothing chained
  assert_secret_absent(
    FAKE_TOKEN,
    caplog.text,
    str(info.value),
    repr(info.value),
    json.dumps(record.to_dict()),
    json.dumps(call.to_dict()),
    repr(expert),
  )
  assert "invalid token" in caplog.text  # the redacted server message was logged


def test_http_expert_never_sends_the_hf_token(serve, monkeypatch):
  monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
  server = serve(("ok", "x"))
  remote(server.url).chat(MESSAGES)
  assert server.requests[-1][1] == f"Bearer {ex.NO_API_KEY}"


def test_http_api_key_is_sent_and_redacted(serve, monkeypatch, caplog):
  caplog.set_level(logging.DEBUG)
  monkeypatch.setenv("MY_SERVER_KEY", "sk-local-secret-42")
  server = serve(("status", 403, "key sk-local-secret-42 is not allowed"))
  expert = make_expert(server.url + "/v1", api_key_env="MY_SERVER_KEY", sleep=Sleeps())
  with pytest.raises(ex.ExpertError) as info:
    expert.chat(MESSAGES)
  assert server.requests[-1][1] == "Bearer sk-local-secret-42"
  assert_secret_absent(
    "sk-local-secret-42", caplog.text, str(info.value), json.dumps(expert.last_call.to_dict())
  )


def test_credentials_in_the_url_are_refused_without_being_shown():
  """A URL's user:password would go out as Basic auth and could come back in an echoed error:
  refused, and no message repeats them."""
  for url in ("https://user:pw-secret@example.com:8443/v1", "https://pw-secret@example.com/v1"):
    with pytest.raises(ValueError) as info:
      make_expert(url)
    assert "carries credentials" in str(info.value) and "api_key_env" in str(info.value)
    assert "pw-secret" not in str(info.value) and "example.com" in str(info.value)
  with pytest.raises(ValueError, match="unknown expert spec") as info:
    make_expert("ftp://user:pw-secret@example.com/v1")
  assert "pw-secret" not in str(info.value)


def test_replicas_share_the_calls_by_calls_in_flight(serve):
  """ "URL,URL": each call goes to the replica with the fewest calls out, so four concurrent
  slow calls are two on each; a replica's URL with credentials is refused like any other."""
  a, b = serve(("sleep", 0.3)), serve(("sleep", 0.3))
  expert = make_expert(f"{a.url}/v1,{b.url}/v1/", sleep=Sleeps())
  assert expert.name == f"{a.url}/v1,{b.url}/v1/"
  asks = [ex.Ask("voter", MESSAGES, 8, 0.0, lambda e, text, call: (text, call)) for _ in range(4)]
  replies = expert.ask_many(asks, concurrency=4)
  assert [text for text, _ in replies] == ["late"] * 4
  assert len(a.requests) == len(b.requests) == 2
  expert.ask_many(asks[:2], concurrency=1)  # one at a time: each finds both replicas idle
  assert (len(a.requests), len(b.requests)) == (4, 2)
  assert {body["model"] for _, _, body in a.requests + b.requests} == {"served-model"}
  with pytest.raises(ValueError, match="carries credentials") as info:
    make_expert(f"{a.url}/v1,https://user:pw-secret@example.com/v1")
  assert "pw-secret" not in str(info.value)


# --- specs ------------------------------------------------------------------------------------


def test_specs(monkeypatch):
  assert make_expert("none") is None and make_expert(" None ") is None
  for bad in ["gpt4", "hf:", "ftp://host/v1", "http://", "", "hf:a b"]:
    with pytest.raises(ValueError, match="unknown expert spec"):
      make_expert(bad)
  with pytest.raises(ValueError, match="needs the policy"):
    make_expert("self")
  monkeypatch.delenv("HF_TOKEN", raising=False)
  with pytest.raises(ValueError, match="HF_TOKEN"):
    make_expert("hf:org/model")
  with pytest.raises(ValueError, match="NOPE_KEY"):
    make_expert("http://127.0.0.1:1/v1", api_key_env="NOPE_KEY")
  monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
  expert = make_expert("hf:org/model", timeout_s=5, max_retries=1)
  assert isinstance(expert, ex.RemoteExpert) and expert.retry.max_retries == 1
  assert FAKE_TOKEN not in repr(expert) and FAKE_TOKEN not in repr(expert.client)


def test_retry_delays():
  policy = ex.RetryPolicy(backoff_s=1, max_backoff_s=6, jitter=0.0)
  assert [policy.delay(k) for k in (1, 2, 3, 4)] == [1, 2, 4, 6]
  assert policy.delay(1, wait_s=3) == 3


# --- messages ---------------------------------------------------------------------------------


def test_image_data_urls_round_trip_and_shrink():
  rgb = random_image(np.random.default_rng(0), 50, 20)
  back = ex.decode_image_url(ex.image_url(rgb))
  assert back.size == (50, 20) and np.array_equal(np.asarray(back), np.asarray(rgb))
  big = ex.decode_image_url(ex.image_url(Image.new("CMYK", (300, 100)), max_side=60))
  assert (big.size, big.mode) == ((60, 20), "RGB")
  message = ex.user_message("q", [rgb, rgb])
  assert [p["type"] for p in message["content"]] == ["image_url", "image_url", "text"]
  with pytest.raises(ValueError, match="data URL"):
    ex.decode_image_url("https://example.com/a.png")


# --- the policy as its own expert -------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
  from catts_jax.policy import Policy

  return Policy.from_pretrained(tiny_ckpt)


def test_self_expert(policy):
  expert = make_expert("self", policy)
  assert isinstance(expert, SelfExpert) and expert.name == "self"
  image = random_image(np.random.default_rng(1), 56, 56)
  messages = [ex.system_message("Be brief."), ex.user_message("Describe it.", [image])]
  prompt, images = expert.render(messages)
  assert prompt.count("<|image_pad|>") == 1 and len(images) == 1
  assert "Be brief." in prompt and prompt.rstrip().endswith("assistant")
  assert np.array_equal(np.asarray(images[0]), np.asarray(image))
  # The same prompt through the policy's own API gives the same greedy text.
  direct = policy.sample([policy.prompt("Describe it.", 1, "Be brief.")], [[image]], n=1, max_new_tokens=6,
                         temperature=0.0).texts[0][0]  # fmt: skip
  assert expert.chat(messages, max_tokens=6, temperature=0.0) == direct
  assert expert.last_call.ok and expert.last_call.attempts == 1
  # Roles run end to end; the random model's text is no plan, so the default order is used.
  order, call = planner.plan(expert, "How many?", [image], max_tokens=6)
  assert order == list(planner.DEFAULT_ORDER) and call.ok and call.fallback


def test_self_expert_answers_a_round_in_one_batch(policy):
  """ask_many decodes the round together, one batch per temperature and budget (a sampled
  ask among greedy ones, a bad one among good ones), and every ask gets what it gets alone."""
  from catts_jax.tts.critic import critique_ask
  from catts_jax.tts.voter import vote_ask

  expert = make_expert("self", policy)
  image = random_image(np.random.default_rng(3), 56, 56)
  bad = dataclasses.replace(vote_ask("How many?", [image], ["3"], max_tokens=6), messages=[
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}])  # fmt: skip
  asks = [
    planner.plan_ask("How many?", [image], max_tokens=6),
    critique_ask("How many?", [image], "It is 3.", max_tokens=6, temperature=1.0),
    bad,
    critique_ask("How many bricks?", [image], "I count 4.", max_tokens=3),  # a shorter budget
    critique_ask("How many?", [image], "It is 3.", max_tokens=6, temperature=1.0),
    critique_ask("How many?", [image], "It is 3.", max_tokens=2, temperature=1.0),
  ]

  def outcome(got):
    if isinstance(got, ex.ExpertError):
      return ("error", got.record.role, got.record.error, got.record.output)
    result, call = got
    return (result, call.role, call.ok, call.fallback)

  decodes = []
  original = expert._decode
  expert._decode = lambda rendered, *a: decodes.append(len(rendered)) or original(rendered, *a)
  together = [outcome(g) for g in expert.ask_many(asks)]
  # One batch per (temperature, budget): greedy 6 and 3, sampled 6 and 2; the bad one fails alone.
  assert sorted(decodes) == [1, 1, 1, 2] and sum(decodes) == 5
  alone = [outcome(expert.ask_many([a])[0]) for a in asks]
  assert together == alone
  assert together[2][0] == "error" and "data URL" in together[2][2]
  assert together[1] == together[4]  # a prompt's seed is its text: the same request, the same reply
  assert together[1][0].startswith(together[5][0])  # a smaller budget: the same reply, cut shorter


def test_self_expert_failure_is_recorded(policy):
  expert = make_expert("self", policy)
  bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]
  with pytest.raises(ex.ExpertError, match="data URL") as info:
    expert.chat(bad)
  assert info.value.record.attempts == 1 and info.value.record.expert == "self"


# --- the real `transformers serve` ------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_server(tiny_ckpt, tmp_path_factory):
  """`transformers serve CKPT` pinned to the tiny checkpoint on CPU (extra transformers[serving])."""
  with transformers_serve(tiny_ckpt, tmp_path_factory.mktemp("serve") / "serve.log", timeout=60) as url:
    yield url


def test_roles_through_transformers_serve(transformers_server, tiny_ckpt, monkeypatch):
  import huggingface_hub.constants

  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  expert = make_expert(transformers_server + "/v1", timeout_s=30, max_retries=1)
  image = random_image(np.random.default_rng(2), 56, 56)
  # Planner: the HTTP call works; the random model writes no plan, so the default is used.
  order, call = planner.plan(expert, "How many bricks?", [image], "answers: 3 (5 of 8)", max_tokens=12)
  assert (call.ok, call.attempts, call.fallback) == (True, 1, True)
  assert order == list(planner.DEFAULT_ORDER) and call.reason and call.output is not None
  assert expert.model == str(tiny_ckpt)  # the pinned model's name, from GET /v1/models
  # Voter: no probabilities in random text -> one ExpertError, no retry (HTTP was fine).
  with pytest.raises(ex.ExpertError, match="unparseable voter output") as info:
    vote(expert, "How many bricks?", [image], ["3", "4"], max_tokens=12)
  assert info.value.record.attempts == 1 and info.value.record.role == "voter"
  # Critic: whatever the model writes, cut to max_chars (or an empty-critique error).
  try:
    text, call = critique(expert, "How many bricks?", [image], "I count 3. The answer is 3.", max_chars=20,
                          max_tokens=12)  # fmt: skip
    assert 0 < len(text) <= 20 and call.ok and call.attempts == 1
  except ex.ExpertError as e:
    assert e.record.error == "empty critique" and e.record.attempts == 1
  # A request naming another model is a 400 from the pinned server: not retried.
  other = make_expert(transformers_server + "/v1", model="someone/else", sleep=Sleeps())
  with pytest.raises(ex.ExpertError, match="HTTP 400") as info:
    other.chat([ex.user_message("hi")], max_tokens=4)
  assert info.value.record.attempts == 1
