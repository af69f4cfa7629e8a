"""`train.sft`: a from-scratch model learns the synthetic task's format and answers; the
format-only warm start learns the format but not the answers; the ablation entry point runs
its stages end to end."""

import json

import pytest

from catts_jax import data
from configs import ablation_colour, synthetic_tiny
from train import ablation, sft


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
  c = colour_config(tfds_dir, 10)
  sft.train(c, tmp_path / "run")
  c.train.steps = 20
  c.optimizer.total_steps = 20
  summary = sft.train(c, tmp_path / "run")
  assert summary["resumed_from"] == 10
  steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 21))


def test_ablation_runs_every_stage(tmp_path, tfds_dir):
  c = ablation_colour.get_config()
  c.data_dir = tfds_dir
  c.sft.train.steps = c.sft.optimizer.total_steps = 4
  c.sft.eval.size = 8
  c.rl.train.update(steps=2, prompts_per_step=2)
  c.rl.rollout.group_size = 2
  c.eval.size = 8
  result = ablation.run(c, tmp_path / "abl")
  assert set(result["arms"]) == {"cdrl", "accuracy"}
  for arm in result["arms"].values():
    assert arm["steps"] == 2 and 0 <= arm["after"]["accuracy"] <= 1
    assert "confidence_drop" in arm["after"]
  readme = tmp_path / "README.md"
  readme.write_text("a\n<!-- ablation-table:start -->\nold\n<!-- ablation-table:end -->\nb\n")
  from catts_jax.eval.report import replace_block

  replace_block(readme, "ablation-table", ablation.markdown(result))
  assert "after RL: cdrl" in readme.read_text() and "old" not in readme.read_text()


def test_step_indices_cover_each_epoch_once():
  seen = [i for step in range(4) for i in data.step_indices(10, step, 5, seed=3)]
  assert sorted(seen) == sorted(list(range(10)) * 2)
