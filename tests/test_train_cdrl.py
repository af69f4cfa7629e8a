"""`python -m train.cdrl` end to end on a tiny checkpoint: logs, checkpoints, resume, export,
and a clean stop on a non-finite loss."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).parents[2] / "shared/data/math-vision-testmini"
if not SHARED.is_dir() and os.environ.get("CI"):
  raise RuntimeError(f"{SHARED} missing")
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")


def cdrl_command(ckpt, out, tmp_path, *overrides):
  return [
    sys.executable,
    "-m",
    "train.cdrl",
    "--config",
    "configs/cdrl_tiny.py",
    f"--config.model.ckpt={ckpt}",
    "--config.data.benchmark=mathvision",
    f"--config.data.manual_dir={SHARED}",
    "--config.data.split=testmini",
    "--config.data.limit=8",
    f"--config.data.data_dir={tmp_path / 'tfds'}",
    f"--out={out}",
    *overrides,
  ]


def cdrl_env(devices=1, **extra):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def cdrl(ckpt, out, tmp_path, *overrides, devices=1):
  return subprocess.run(
    cdrl_command(ckpt, out, tmp_path, *overrides),
    capture_output=True,
    text=True,
    env=cdrl_env(devices),
    timeout=600,
    cwd=Path(__file__).parents[1],
  )


def test_train_resume_and_export(tiny_ckpt, tmp_path):
  out = tmp_path / "run"
  # The confidence rewards' own gradient from the third step on (0-based step 2).
  gradient = ["--config.rollout.confidence_gradient=True", "--config.rollout.confidence_gradient_from=2"]
  first = cdrl(tiny_ckpt, out, tmp_path, *gradient)
  assert first.returncode == 0, first.stderr[-3000:]
  rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert ["noisy_rows" in r for r in rows] == [False, False, True]
  for r in rows:
    assert np.isfinite(r["loss"]) and r["groups"] == 2 and 0 < r["confidence"] <= 1
    assert {"reward_accuracy", "reward_sensitivity", "reward_calibration", "kl", "clip_fraction"} <= set(r)
  assert rows[1]["kl"] > 0  # the policy moved away from the reference
  assert list((out / "tb").iterdir())

  more = cdrl(tiny_ckpt, out, tmp_path, "--config.train.steps=5", *gradient)
  assert more.returncode == 0, more.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["resumed_from"] == 3 and report["last"]["step"] == 5
  rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]

  import transformers

  _, info = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
    out / "final", output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"]


def test_non_finite_loss_stops_and_keeps_checkpoint(tiny_ckpt, tmp_path):
  out = tmp_path / "run"
  bad = cdrl(
    tiny_ckpt,
    out,
    tmp_path,
    "--config.optimizer.learning_rate=1e30",
    "--config.optimizer.clip_norm=0.0",
    "--config.train.steps=6",
  )
  assert bad.returncode == 3, bad.stderr[-3000:]
  assert "non-finite" in bad.stderr and "is intact" in bad.stderr
  from catts_jax.checkpoint import Checkpointer

  ckpts = Checkpointer(out / "checkpoints", async_save=False)
  step = ckpts.latest_step()
  assert step is not None and step < 6
  import orbax.checkpoint as ocp

  restored = ckpts.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
  assert restored["record"]["step"] == step


def test_the_run_builds_its_model_with_the_configs_dtypes_and_remat(tiny_ckpt):
  """train.cdrl's model (`presets.resolve`, as rl.trainer builds it) is the checkpoint's
  architecture with the config's compute dtype, master-weight dtype and remat (the 3B/7B
  configs set float32 masters and remat)."""
  from catts_jax.models.qwen2_5_vl import ModelConfig, presets
  from configs import cdrl_tiny

  cfg = cdrl_tiny.get_config()
  cfg.model.update(ckpt=str(tiny_ckpt), dtype="bfloat16", param_dtype="bfloat16", remat=True)
  got = presets.resolve(cfg.model)
  assert got.remat and got.param_dtype == "bfloat16" and got.dtype == "bfloat16"
  assert got.text == ModelConfig.from_pretrained(tiny_ckpt).text


def test_two_processes_train_on_images_as_one_process(tiny_ckpt, tmp_path):
  """jax.distributed over two CPU processes (one device each) runs the same training as one
  process with two devices: Math-Vision images, perturbed copies in the batch, data=2."""
  from test_distributed import free_port

  run = ["--config.mesh.data=2", "--config.train.steps=2", "--config.rollout.confidence_gradient=True"]
  alone = cdrl(tiny_ckpt, tmp_path / "alone", tmp_path, *run, devices=2)  # also builds the tfds cache
  assert alone.returncode == 0, alone.stderr[-3000:]
  coordinator = f"127.0.0.1:{free_port()}"
  procs = [
    subprocess.Popen(
      cdrl_command(tiny_ckpt, tmp_path / "two", tmp_path, *run),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=cdrl_env(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
      cwd=Path(__file__).parents[1],
    )
    for i in range(2)
  ]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]

  def logged(name):
    return [json.loads(x) for x in (tmp_path / name / "train.jsonl").read_text().splitlines()]

  one, two = logged("alone"), logged("two")
  assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
  assert all(r["noisy_rows"] > 0 for r in two)
  for a, b in zip(one, two):
    for key in ("loss", "reward", "confidence", "confidence_perturbed", "grad_norm"):
      assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])
  from safetensors.numpy import load_file

  want, got = (
    load_file(tmp_path / "alone/final/model.safetensors"),
    load_file(tmp_path / "two/final/model.safetensors"),
  )
  assert want.keys() == got.keys()
  for name in want:
    np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


def test_rollout_mesh_trains_as_the_trainer_mesh(tiny_ckpt, tmp_path):
  """Rollouts on their own mesh (data 2 x tensor 2 over the trainer's fsdp 4 devices, the
  weights cast and resharded once a step) give the same training as rollouts on the
  trainer's mesh: losses, rewards and final weights to 1e-5."""
  run = ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.train.steps=2"]
  same = cdrl(tiny_ckpt, tmp_path / "same", tmp_path, *run, devices=4)
  own = cdrl(tiny_ckpt, tmp_path / "own", tmp_path, *run, "--config.rollout_mesh=data=2,tensor=2", devices=4)
  assert same.returncode == 0 and own.returncode == 0, (same.stderr[-2000:], own.stderr[-2000:])
  logged = lambda name: [json.loads(x) for x in (tmp_path / name / "train.jsonl").read_text().splitlines()]  # noqa: E731
  for a, b in zip(logged("same"), logged("own"), strict=True):
    for key in ("loss", "reward", "confidence", "confidence_perturbed", "grad_norm"):
      assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])
  report = json.loads((tmp_path / "own" / "report.json").read_text())
  assert report["meshes"]["rollout"] == {"data": 2, "fsdp": 1, "tensor": 2}
  assert report["meshes"]["train"] == {"data": 1, "fsdp": 4, "tensor": 1}
