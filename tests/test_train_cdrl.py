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


def cdrl(ckpt, out, tmp_path, *overrides):
  cmd = [
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
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
    cmd, capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parents[1]
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
  """train.cdrl's model is the checkpoint's architecture with the config's compute dtype,
  master-weight dtype and remat (the 3B/7B configs set float32 masters and remat)."""
  from catts_jax.models.qwen2_5_vl import ModelConfig
  from configs import cdrl_tiny
  from train.cdrl import model_config

  cfg = cdrl_tiny.get_config()
  cfg.model.update(ckpt=str(tiny_ckpt), dtype="bfloat16", param_dtype="bfloat16", remat=True)
  got = model_config(cfg)
  assert got.remat and got.param_dtype == "bfloat16" and got.dtype == "bfloat16"
  assert got.text == ModelConfig.from_pretrained(tiny_ckpt).text
