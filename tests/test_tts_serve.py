"""The local Expert server (catts_jax/tts/serve.py) as it is started, without starting it."""

import pytest


def test_the_local_server_runs_torch_on_one_thread_and_a_failed_start_is_a_server_error(
  tmp_path, monkeypatch
):
  """`serving` starts `transformers serve` with OMP/MKL_NUM_THREADS (1: torch's own pool
  beside JAX's made the tiny Expert 20x slower on 2 cores) and offline; a server that exits
  before answering is a ServerError quoting its log."""
  pytest.importorskip("fastapi")
  pytest.importorskip("uvicorn")
  from catts_jax.tts import serve

  started = {}

  class Exits:  # a server process that prints one line and dies
    def __init__(self, command, stdout, stderr, env):
      started.update(command=command, env=env)
      stdout.write(b"no such model\n")
      stdout.flush()

    def poll(self):
      return 1

    def terminate(self):
      pass

    def wait(self, timeout=None):
      return 1

  monkeypatch.setattr(serve.subprocess, "Popen", Exits)
  with pytest.raises(serve.ServerError, match="did not start:\nno such model"):
    with serve.serving("ckpt", tmp_path / "server.log") as servers:
      servers.urls()
  env = started["env"]
  assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
  assert "serve" in started["command"] and "ckpt" in started["command"]


def test_replicas_start_at_once_and_all_stop(tmp_path, monkeypatch):
  """`replicas` servers are all started before the block runs (they load while it works),
  `urls()` waits for each, every log has its own file, and every process is stopped."""
  pytest.importorskip("fastapi")
  pytest.importorskip("uvicorn")
  from catts_jax.tts import serve

  started, stopped = [], []

  class Runs:  # a server process that runs until terminated
    def __init__(self, command, stdout, stderr, env):
      started.append(command[command.index("--port") + 1])
      stdout.write(b"up\n")

    def poll(self):
      return None

    def terminate(self):
      stopped.append(self)

    def wait(self, timeout=None):
      return 0

  monkeypatch.setattr(serve.subprocess, "Popen", Runs)
  loaded = []  # the servers answer only once the block has begun
  monkeypatch.setattr(serve, "_healthy", lambda port: bool(loaded) and str(port) in started)
  with serve.serving("ckpt", tmp_path / "server.log", timeout=2, replicas=3) as servers:
    assert len(started) == 3 and not stopped
    loaded.append(True)
    urls = servers.urls()
  assert urls == [f"http://127.0.0.1:{port}" for port in started] and len(set(urls)) == 3
  assert len(stopped) == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ["server.log", "server_2.log", "server_3.log"]
