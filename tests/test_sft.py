"""Supervised warm start (`catts_jax.rl.sft`, run by `train.sft`): a from-scratch model learns the synthetic task's format and answers; the
format-only warm start learns the format but not the answers; the ablation entry point runs
its stages end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cpu_env import cpu_env

from catts_jax import data
from catts_jax.rl import sft, validate
from configs import synthetic_tiny

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def colour_config(tfds_dir, steps, format_only=False):
  c = synthetic_tiny.get_config("colour")
  c.data.data_dir = tfds_dir
  c.train.update(steps=steps, format_only=format_only, save_every=10)
  c.optimizer.total_steps = steps
  c.eval.size = 64
  return c


def test_sft_learns_to_see_the_colour(tmp_path, tfds_dir):
  summary = sft.train(colour_config(tfds_dir, 60), tmp_path / "run")
  assert summary["loss_last"] < 0.3 * summary["loss_first"]
  assert summary["eval"]["accuracy"] >= 0.6  # chance is 0.25
  assert (tmp_path / "run" / "final" / "tokenizer.json").is_file()


def test_format_only_learns_the_format_not_the_answers(tmp_path, tfds_dir):
  summary = sft.train(colour_config(tfds_dir, 60, format_only=True), tmp_path / "run")
  assert summary["loss_last"] < 0.5  # the format is learned...
  assert summary["eval"]["accuracy"] <= 0.45  # ...the answers are not (chance 0.25)


def test_sft_resumes_from_its_checkpoint(tmp_path, tfds_dir):
  """4 steps, then the run extended to 8 after a kill that logged step 5 but never
  checkpointed it; the resume changes the learning rate, which needs override_resume."""
  c = colour_config(tfds_dir, 4)
  c.optimizer.total_steps = 8  # the schedule of the whole run: the resume only extends train.steps
  c.train.save_every = 4
  c.eval.size = 8
  sft.train(c, tmp_path / "run")
  log = tmp_path / "run" / "train.jsonl"
  with log.open("a") as f:
    f.write(json.dumps({"step": 5, "loss": -1.0}) + "\n")
  c.train.steps = 8
  c.optimizer.learning_rate = 1e-3
  with pytest.raises(validate.ConfigError, match=r"other settings: optimizer.learning_rate 0.003 -> 0.001;"):
    sft.train(c, tmp_path / "run")
  summary = sft.train(c, tmp_path / "run", override_resume=True)
  assert summary["resumed_from"] == 4
  change = {"optimizer.learning_rate": [3e-3, 1e-3]}
  assert summary["resumes"] == [{"step": 4, "changed": change}]
  assert json.loads((tmp_path / "run" / "run.json").read_text())["history"] == summary["resumes"]
  rows = [json.loads(line) for line in log.read_text().splitlines()]
  assert rows[4] == {"step": 4, "override_resume": change}
  del rows[4]
  assert [r["step"] for r in rows] == list(range(1, 9)) and rows[4]["loss"] > 0  # step 5 once, redone


def test_ablation_runs_every_stage(tmp_path, tfds_dir):
  """The entry point as a program (one device, as users run it), tiny stage lengths."""
  out = tmp_path / "abl"
  overrides = [
    f"--config.data_dir={tfds_dir}",
    "--config.sft.train.steps=4",
    "--config.sft.optimizer.total_steps=4",
    "--config.sft.eval.size=8",
    "--config.rl.train.steps=2",
    "--config.rl.train.prompts_per_step=2",
    "--config.rl.rollout.group_size=2",
    "--config.eval.size=8",
  ]
  env = cpu_env(1)
  cmd = [
    sys.executable,
    "-m",
    "train.ablation",
    "--config",
    "configs/ablation_colour.py",
    *overrides,
    f"--out={out}",
  ]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((out / "report.json").read_text())
  assert set(result["arms"]) == {"cdrl", "accuracy"}
  for arm in result["arms"].values():
    assert arm["steps"] == 2 and 0 <= arm["after"]["accuracy"] <= 1
    assert "confidence_drop" in arm["after"]
    by_answer = arm["after"]["accuracy_by_answer"]  # per colour: which ones the arm misses
    assert by_answer and all(0 <= v <= 1 for v in by_answer.values())
  readme = tmp_path / "README.md"
  readme.write_text("a\n<!-- ablation-table:start -->\nold\n<!-- ablation-table:end -->\nb\n")
  cmd = [sys.executable, "-m", "train.ablation", f"--out={out}", f"--render_readme={readme}"]
  assert subprocess.run(cmd, env=env, timeout=300, cwd=ROOT).returncode == 0
  assert "after RL: cdrl" in readme.read_text() and "old" not in readme.read_text()
  assert "accuracy by answer" in readme.read_text()


def test_step_indices_cover_each_epoch_once():
  seen = [i for step in range(4) for i in data.step_indices(10, step, 5, seed=3)]
  assert sorted(seen) == sorted(list(range(10)) * 2)
