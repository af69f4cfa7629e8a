"""`python -m train.cdrl` end to end on a tiny checkpoint: logs, checkpoints, resume, export,
and a clean stop on a non-finite loss."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cpu_env import cpu_env
from tb_events import shown

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


def cdrl(ckpt, out, tmp_path, *overrides, devices=1):
  return subprocess.run(
    cdrl_command(ckpt, out, tmp_path, *overrides),
    capture_output=True,
    text=True,
    env=cpu_env(devices),
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
  assert json.loads((out / "run.json").read_text())["config"]["train.steps"] == 3

  # A kill after step 4 was logged (train.jsonl, TensorBoard) but before its checkpoint
  # committed: the resume from step 3 redoes step 4, which must show once.
  with (out / "train.jsonl").open("a") as f:
    f.write(json.dumps({"step": 4, "loss": 123.0}) + "\n")
  from tensorboardX import SummaryWriter

  killed = SummaryWriter(str(out / "tb"), filename_suffix=".killed")
  killed.add_scalar("loss", 123.0, 4)
  killed.close()
  more = cdrl(tiny_ckpt, out, tmp_path, "--config.train.steps=5", *gradient)  # steps may change
  assert more.returncode == 0, more.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["resumed_from"] == 3 and report["last"]["step"] == 5 and report["resumes"] == []
  rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[3]["loss"] != 123.0
  losses = shown(out / "tb")["loss"]
  assert [s for s, _ in losses] == [1, 2, 3, 4, 5] and 123.0 not in [v for _, v in losses]

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


def test_two_processes_and_a_rollout_mesh_train_as_one_process(tiny_ckpt, tmp_path):
  """Math-Vision images, perturbed copies in the batch, data=2 on one process with two devices;
  the same training (losses, rewards, final weights to 1e-5) from jax.distributed over two CPU
  processes of one device each, and from a trainer mesh of fsdp 4 whose rollouts run on their
  own mesh (data 2 x tensor 2 over the same devices, the weights cast and resharded once a
  step)."""
  from serving import free_port

  # Adam divides each element's step by its gradient's size, so where a gradient nearly
  # cancels it magnifies the rounding of another reduction order (fsdp 4 against data 2: at
  # the config's learning rate 1e-3, one embedding element ended 2e-5 apart, its step 0.00093
  # where its row's others moved +-0.00167). The final weights' gap scales with the rate, and
  # at 1e-4 the 1e-5 bound below tests the layouts, not that conditioning.
  run = [
    "--config.train.steps=2",
    "--config.rollout.confidence_gradient=True",
    "--config.optimizer.learning_rate=1e-4",
  ]
  alone = cdrl(tiny_ckpt, tmp_path / "alone", tmp_path, "--config.mesh.data=2", *run, devices=2)
  assert alone.returncode == 0, alone.stderr[-3000:]  # it also builds the tfds cache
  coordinator = f"127.0.0.1:{free_port()}"
  procs = [
    subprocess.Popen(
      cdrl_command(tiny_ckpt, tmp_path / "two", tmp_path, "--config.mesh.data=2", *run),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=cpu_env(1, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
      cwd=Path(__file__).parents[1],
    )
    for i in range(2)
  ]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  mesh = ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.rollout_mesh=data=2,tensor=2"]
  own = cdrl(tiny_ckpt, tmp_path / "own", tmp_path, *mesh, *run, devices=4)
  assert own.returncode == 0, own.stderr[-3000:]
  report = json.loads((tmp_path / "own" / "report.json").read_text())
  assert report["meshes"]["rollout"] == {"data": 2, "fsdp": 1, "tensor": 2}
  assert report["meshes"]["train"] == {"data": 1, "fsdp": 4, "tensor": 1}

  def logged(name):
    return [json.loads(x) for x in (tmp_path / name / "train.jsonl").read_text().splitlines()]

  from safetensors.numpy import load_file

  want = load_file(tmp_path / "alone/final/model.safetensors")
  for name in ("two", "own"):
    assert [r["step"] for r in logged(name)] == [1, 2], name
    assert all(r["noisy_rows"] > 0 for r in logged(name))
    for a, b in zip(logged("alone"), logged(name), strict=True):
      for key in ("loss", "reward", "confidence", "confidence_perturbed", "grad_norm"):
        assert abs(a[key] - b[key]) <= 1e-5, (name, key, a[key], b[key])
    got = load_file(tmp_path / name / "final/model.safetensors")
    assert want.keys() == got.keys()
    for tensor in want:
      np.testing.assert_allclose(got[tensor], want[tensor], atol=1e-5, err_msg=f"{name}: {tensor}")
