"""Exact resume: a run SIGKILLed mid-training (and mid-save) and restarted ends bit-identical
to an uninterrupted run."""

import pathlib
import signal
import subprocess
import sys

import numpy as np
from cpu_env import cpu_env

WORKER = pathlib.Path(__file__).with_name("resume_worker.py")


def run(*args):
  env = cpu_env(1)
  return subprocess.run(
    [sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True, env=env, timeout=600
  )


def test_killed_run_resumes_bit_identically(tiny_ckpt, tmp_path):
  whole = run(tiny_ckpt, tmp_path / "whole", 5)
  assert whole.returncode == 0, whole.stderr[-3000:]
  assert "started at 0" in whole.stdout

  killed = run(tiny_ckpt, tmp_path / "killed", 5, 3)
  assert killed.returncode == -signal.SIGKILL
  # Whatever the kill interrupted is not a checkpoint: only finished steps are listed.
  from catts_jax.checkpoint import Checkpointer

  latest = Checkpointer(tmp_path / "killed", async_save=False).latest_step()
  assert latest in (2, 3)
  if latest == 2:  # the usual case: step 3 was being written and stays a temporary directory
    assert any(p.name.startswith("3.") for p in (tmp_path / "killed").iterdir())
  resumed = run(tiny_ckpt, tmp_path / "killed", 5)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"started at {latest}" in resumed.stdout

  a = np.load(tmp_path / "whole" / "final.npz")
  b = np.load(tmp_path / "killed" / "final.npz")
  assert len(a.files) == len(b.files) > 10
  for name in a.files:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resume_from_another_layout_names_it(tmp_path):
  """A checkpoint written with per-layer params (before layers were stacked) is refused with a
  message naming the saved and the expected params, not an orbax tree error."""
  import jax.numpy as jnp
  import pytest

  from catts_jax.checkpoint import Checkpointer, CheckpointLayoutError

  kernel = lambda *shape: {"kernel": jnp.ones(shape)}  # noqa: E731
  per_layer = {"language_model": {"layers": {str(i): {"mlp": kernel(4, 8)} for i in range(3)}}}
  stacked = {"language_model": {"layers": {"mlp": kernel(3, 4, 8)}}}
  checkpoints = Checkpointer(tmp_path, async_save=False)
  checkpoints.save(1, per_layer, {"count": jnp.zeros(())}, {"step": 1}, force=True)
  with pytest.raises(
    CheckpointLayoutError,
    match=r"language_model/layers/0/mlp/kernel \(4, 8\).*"
    r"language_model/layers/mlp/kernel \(3, 4, 8\).*stacked on a leading 'layers' axis",
  ):
    checkpoints.restore(stacked, {"count": jnp.zeros(())})
  # The same layout restores as before.
  params, _, record = checkpoints.restore(per_layer, {"count": jnp.zeros(())})
  assert record["step"] == 1 and params["language_model"]["layers"]["2"]["mlp"]["kernel"].shape == (4, 8)
