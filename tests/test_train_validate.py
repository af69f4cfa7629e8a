"""Training settings checked before any work (catts_jax/rl/validate.py): every rule at its bound,
the rows of a step and of a micro-batch over the mesh's data x fsdp devices, the shipped
configs; a resume held to run.json's settings; a resumed run's train.jsonl cut back to the
restored step and its TensorBoard events purged past it. The entry points' exit codes and
messages are rows of tests/test_bad_inputs.py."""

from __future__ import annotations

import json
import re

import pytest
from tb_events import events, shown

from catts_jax import runs
from catts_jax.rl import validate
from configs import ablation_colour, cdrl_qwen2_5_vl, cdrl_tiny, synthetic_tiny, synthetic_tiny_cdrl

CONFIGS = {"cdrl": cdrl_tiny.get_config, "sft": synthetic_tiny.get_config}


def _set(cfg, key: str, value) -> None:
  *path, name = key.split(".")
  for part in path:
    cfg = cfg[part]
  with cfg.ignore_type():
    cfg[name] = value


def _bound(expected: str) -> float:
  return float(re.search(r"[>=]+ (-?[\d.e-]+)", expected).group(1))


RULES = [
  (kind, key, rule, optional) for kind, rules in validate.RULES.items() for key, rule, optional in rules
]


@pytest.mark.parametrize("kind,key,rule,optional", RULES, ids=[f"{kind}:{key}" for kind, key, *_ in RULES])
def test_each_rule_takes_its_bound_and_refuses_past_it(kind, key, rule, optional):
  _, expected = rule
  low, integer = _bound(expected), "integer" in expected
  inside = low if ">=" in expected else low + 1e-3  # `> 0`: just above
  outside = low - 1 if ">=" in expected else low
  cfg = CONFIGS[kind]()
  _set(cfg, key, int(inside) if integer else inside)
  validate.check(cfg, kind, 1)
  _set(cfg, key, int(outside) if integer else outside)
  with pytest.raises(validate.ConfigError, match=re.escape(f"--config.{key}=")) as raised:
    validate.check(cfg, kind, 1)
  assert expected in str(raised.value) and "\n" not in str(raised.value)
  _set(cfg, key, None)
  if optional:
    validate.check(cfg, kind, 1)
  else:
    with pytest.raises(validate.ConfigError, match=re.escape(f"--config.{key}=None")):
      validate.check(cfg, kind, 1)
  if integer:
    _set(cfg, key, True)
    with pytest.raises(validate.ConfigError, match=re.escape(f"--config.{key}=True")):
      validate.check(cfg, kind, 1)


def test_the_shipped_configs_pass():
  for spec, chips in cdrl_qwen2_5_vl.CHIPS.items():
    size = "72b" if chips == 64 else "7b"
    validate.check(cdrl_qwen2_5_vl.get_config(f"{size},{spec}"), "cdrl", chips)
  validate.check(cdrl_qwen2_5_vl.get_config("3b,cpu"), "cdrl", 1)
  validate.check(cdrl_tiny.get_config(), "cdrl", 1)
  validate.check(synthetic_tiny_cdrl.get_config(), "cdrl", 1)
  for task in ("reasoning", "colour"):
    validate.check(synthetic_tiny.get_config(task), "sft", 1)
  ablation = ablation_colour.get_config()
  validate.check(ablation.sft, "sft", 1)
  validate.check(ablation.rl, "cdrl", 1)


def test_rows_and_micro_batches_split_over_data_and_fsdp():
  cfg = cdrl_tiny.get_config()  # 2 problems x 4 samples = 8 rows a step
  cfg.mesh.update(data=2, fsdp=4)
  validate.check(cfg, "cdrl", 8)
  cfg.train.prompts_per_step = 3  # 12 rows
  with pytest.raises(
    validate.ConfigError, match=r"prompts_per_step=3: 3 problems x rollout.group_size 4 = 12"
  ):
    validate.check(cfg, "cdrl", 8)
  cfg.mesh.update(data=1, fsdp=2, tensor=4)  # tensor parallelism splits no rows
  validate.check(cfg, "cdrl", 8)
  cfg.train.micro_batch = 3
  with pytest.raises(validate.ConfigError, match=r"micro_batch=3: expected a multiple of data x fsdp = 2"):
    validate.check(cfg, "cdrl", 8)
  cfg.train.micro_batch = 4
  validate.check(cfg, "cdrl", 8)
  cfg.rollout_mesh = "data=3,tensor=-1"
  with pytest.raises(validate.ConfigError, match=r"--config.rollout_mesh='data=3,tensor=-1': .*8 devices"):
    validate.check(cfg, "cdrl", 8)

  sft = synthetic_tiny.get_config("colour")
  sft.train.batch_size = 6
  validate.check(sft, "sft", 8)  # no mesh: one device
  sft.mesh = dict(data=4, fsdp=1, tensor=2)
  with pytest.raises(
    validate.ConfigError, match=r"batch_size=6: 6 rows a step; expected a multiple of .* = 4"
  ):
    validate.check(sft, "sft", 8)
  sft.train.batch_size = 8
  validate.check(sft, "sft", 8)


@pytest.mark.parametrize(
  "key,value,message",
  [
    (
      "rollout.temperature",
      0.7,
      "--config.rollout.temperature=0.7, top_p=1.0: the learner scores the temperature-1",
    ),
    (
      "rollout.top_p",
      0.9,
      "--config.rollout.temperature=1.0, top_p=0.9: the learner scores the temperature-1",
    ),
    (
      "rollout.score_micro_batch",
      3,
      "--config.rollout.score_micro_batch=3: expected a multiple of group_size=4",
    ),
  ],
)
def test_rollout_settings_are_checked_before_any_work(key, value, message):
  # RolloutConfig's own checks, made by `check` (before train.cdrl locks or writes its output
  # directory), as one line naming the setting.
  cfg = cdrl_tiny.get_config()
  validate.check(cfg, "cdrl", 1)
  _set(cfg, key, value)
  with pytest.raises(validate.ConfigError) as raised:
    validate.check(cfg, "cdrl", 1)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_resume_keeps_the_runs_settings(tmp_path):
  out = tmp_path / "run"
  out.mkdir()
  first = validate.settings(cdrl_tiny.get_config())
  assert first["optimizer.learning_rate"] == 1e-3 and first["rollout.reward_weights.accuracy"] == 1.0
  assert validate.record_run(out, first, 0, {}) == []
  assert json.loads((out / "run.json").read_text()) == {"config": first, "history": []}

  free = cdrl_tiny.get_config()
  free.train.update(steps=9, save_every=5, keep=1, micro_batch=2)
  free.rollout.update(sample_micro_batch=8, score_micro_batch=4)
  free.mesh.update(data=2)
  free.update(rollout_mesh="data=2")
  free.data.data_dir = "/elsewhere"
  assert validate.resume_changes(out, validate.settings(free), 3, override=False) == {}
  with pytest.raises(validate.ConfigError, match="train.steps_total"):  # not under train.steps
    validate.resume_changes(out, {**first, "train.steps_total": 9}, 3, override=False)

  other = cdrl_tiny.get_config()
  other.optimizer.learning_rate = 2e-3
  other.train.update(seed=1, steps=9)
  other.rollout.reward_weights = {"accuracy": 1.0, "sensitivity": 0.5}  # calibration dropped
  changed = validate.settings(other)
  # A fresh run (no checkpoint yet) starts with whatever settings it has.
  assert validate.resume_changes(out, changed, None, override=False) == {}
  with pytest.raises(validate.ConfigError) as raised:
    validate.resume_changes(out, changed, 3, override=False)
  message = str(raised.value)
  assert "\n" not in message and "step 3" in message and "--override_resume" in message
  assert (
    "optimizer.learning_rate 0.001 -> 0.002, rollout.reward_weights.calibration 0.5 -> (none), train.seed 0 -> 1;"
    in message
  )
  assert json.loads((out / "run.json").read_text())["config"] == first  # left as it was

  want = {
    "optimizer.learning_rate": [1e-3, 2e-3],
    "rollout.reward_weights.calibration": [0.5, None],
    "train.seed": [0, 1],
  }
  assert validate.resume_changes(out, changed, 3, override=True) == want
  history = validate.record_run(out, changed, 3, want)
  assert history == [{"step": 3, "changed": want}]
  assert json.loads((out / "run.json").read_text()) == {"config": changed, "history": history}
  assert validate.resume_changes(out, changed, 5, override=False) == {}  # the new settings hold now
  assert validate.record_run(out, changed, 5, {}) == history  # the history stays
  assert validate.record_run(out, first, 0, {}) == []  # a fresh start: a new history


def test_a_run_from_before_run_json_resumes_against_its_report(tmp_path):
  cfg = synthetic_tiny.get_config()
  runs.write_json(tmp_path / "report.json", {"config": cfg.to_dict()})
  assert validate.resume_changes(tmp_path, validate.settings(cfg), 50, override=False) == {}
  cfg.train.batch_size = 16
  with pytest.raises(validate.ConfigError, match="train.batch_size 32 -> 16;"):
    validate.resume_changes(tmp_path, validate.settings(cfg), 50, override=False)
  (tmp_path / "report.json").unlink()
  assert validate.resume_changes(tmp_path, validate.settings(cfg), 50, override=False) == {}
  history = validate.record_run(tmp_path, validate.settings(cfg), 50, {})
  assert [h["step"] for h in history] == [50] and "before run.json" in history[0]["recorded"]


def test_a_resume_drops_the_rows_past_its_checkpoint(tmp_path):
  """A run killed after logging step 5 but before its checkpoint committed: step 3 restored."""
  log = tmp_path / "train.jsonl"
  rows = [{"step": i, "loss": 1.0 / i} for i in range(1, 6)]
  log.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b'{"step": 6, "lo')
  assert runs.drop_rows_after(log, 3) == 2
  assert runs.read_rows(log) == rows[:3]
  assert log.read_text().endswith("\n")
  before = log.stat().st_mtime_ns
  assert runs.drop_rows_after(log, 3) == 0 and log.stat().st_mtime_ns == before  # nothing to drop
  assert runs.drop_rows_after(tmp_path / "none.jsonl", 3) == 0
  assert runs.drop_rows_after(log, 0) == 3 and log.read_text() == ""


def test_tensorboard_shows_a_step_redone_after_a_kill_once(tmp_path):
  from tensorboardX import SummaryWriter

  from catts_jax.rl import trainer

  killed = SummaryWriter(str(tmp_path / "tb"))  # steps 1-4 logged, the checkpoint of step 3 the last
  for step in (1, 2, 3, 4):
    killed.add_scalar("loss", 1.0 / step, step)
  killed.close()
  (old,) = (tmp_path / "tb").glob("events.*")
  old.rename(old.with_name("events.out.tfevents.1000000000.killed"))  # written before the resume
  resumed = trainer.tensorboard(tmp_path, 3)
  for step in (4, 5):
    resumed.add_scalar("loss", 10.0 + step, step)
  resumed.close()
  assert shown(tmp_path / "tb") == {"loss": [(1, 1.0), (2, 0.5), (3, round(1 / 3, 6)), (4, 14.0), (5, 15.0)]}
  fresh = trainer.tensorboard(tmp_path / "fresh", 0)  # a first start purges nothing
  fresh.add_scalar("loss", 1.0, 1)
  fresh.close()
  assert not any(
    e.HasField("session_log") for p in (tmp_path / "fresh/tb").glob("events.*") for e in events(p)
  )
