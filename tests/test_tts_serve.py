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
    with serve.serving("ckpt", tmp_path / "server.log"):
      pass
  env = started["env"]
  assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
  assert "serve" in started["command"] and "ckpt" in started["command"]
