"""The bundled checkpoints and the demo (`catts_jax.demo`, run by `infer.demo`): the checkpoints
are small, safe to load and equal transformers' reference; the demo runs every stage end to
end, resumes, and checks its targets on the measured figures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cpu_env import cpu_env

from catts_jax import demo, runs
from catts_jax.tts import summary as tts_summary
from infer import demo as demo_cli

ROOT = Path(__file__).parents[1]
BUNDLED = [ROOT / "checkpoints" / "synthetic_sft", ROOT / "checkpoints" / "synthetic_cdrl"]


@pytest.mark.parametrize("ckpt", BUNDLED, ids=lambda p: p.name)
def test_bundled_checkpoint_is_small_safe_and_documented(ckpt):
  files = [p for p in ckpt.rglob("*") if p.is_file()]
  assert sum(p.stat().st_size for p in files) <= 10 * 2**20
  suffixes = {p.suffix for p in files}
  assert ".safetensors" in suffixes and not suffixes & {".bin", ".pt", ".pth", ".pkl", ".pickle"}
  config = json.loads((ckpt / "config.json").read_text())
  assert config["model_type"] == "qwen2_5_vl"
  training = json.loads((ckpt / "training.json").read_text())  # how it was made, and how long it took
  assert training["seconds"] > 0 and training["command"].startswith("python -m train.")
  assert "seed" in json.dumps(training["config"])


def test_bundled_cdrl_checkpoint_equals_transformers():
  from catts_jax.verify import verify

  result = verify(str(BUNDLED[1]), new_tokens=8)
  assert result["ok"], result


def calibration(accuracy, drop):
  return {"accuracy": accuracy, "confidence_drop": drop}


def synthetic(catts, majority, adaptive):
  ns = ["1", "2", "4"]
  beta = lambda acc: (acc[-1] - acc[0]) * 50  # two doublings; only the ratio matters here  # noqa: E731
  return {
    "accuracy": {"catts": dict(zip(ns, catts)), "majority": dict(zip(ns, majority))},
    "slope": {"catts": {"beta": beta(catts)}, "majority": {"beta": beta(majority)}},
    "adaptive": {"points": [{"cap": c, "mean_samples": s, "accuracy": a} for c, s, a in adaptive]},
  }


def test_targets_hold_and_fail_on_the_figures():
  cal = {"sft": calibration(0.5, 0.05), "cdrl": calibration(0.55, 0.12)}
  syn = synthetic([0.5, 0.6, 0.8], [0.5, 0.55, 0.6], [(1, 1.0, 0.5), (2, 1.5, 0.62), (4, 2.0, 0.8)])
  t = demo.targets(cal, syn)
  assert t["drop_ratio_cdrl_vs_sft"]["value"] == pytest.approx(2.4) and t["drop_ratio_cdrl_vs_sft"]["holds"]
  assert t["accuracy_cdrl_vs_sft"]["holds"]
  assert t["beta_catts_vs_majority"]["value"] == pytest.approx([15.0, 5.0])  # 3x
  assert t["beta_catts_vs_majority"]["holds"] and t["catts_vs_majority_at_4"]["holds"]
  assert (
    t["adaptive_samples_to_majority_top"]["value"] == 1.5 and t["adaptive_samples_to_majority_top"]["holds"]
  )

  cal = {"sft": calibration(0.5, 0.05), "cdrl": calibration(0.45, 0.09)}
  syn = synthetic([0.5, 0.5, 0.55], [0.5, 0.6, 0.7], [(1, 1.0, 0.5), (2, 2.0, 0.5), (4, 4.0, 0.55)])
  t = demo.targets(cal, syn)
  assert not any(v["holds"] for v in t.values()), t
  flat = synthetic([0.5, 0.5, 0.6], [0.5, 0.5, 0.5], [(4, 4.0, 0.6)])  # majority's beta 0: no ratio
  assert not demo.targets(cal, flat)["beta_catts_vs_majority"]["holds"]
  # Both falling, CA-TTS's slope 2x majority's: the ratio of two losses is no gain.
  falling = demo.targets(cal, synthetic([0.6, 0.5, 0.4], [0.6, 0.55, 0.5], [(4, 4.0, 0.4)]))
  assert falling["beta_catts_vs_majority"]["value"] == pytest.approx([-10.0, -5.0])
  assert not falling["beta_catts_vs_majority"]["holds"]


def test_with_a_served_expert_the_difference_needs_its_interval_above_zero_and_replies_parse():
  cal = {"sft": calibration(0.5, 0.05), "cdrl": calibration(0.55, 0.12)}
  syn = synthetic([0.5, 0.6, 0.8], [0.5, 0.55, 0.6], [(4, 4.0, 0.8)])
  syn["catts_vs_majority"] = {"diff": 20.0, "low": 3.0, "high": 35.0}
  syn["parse"] = {
    "voter": {"calls": 100, "parsed": 95, "failed": 5, "rate": 0.95},
    "critic": {"calls": 40, "parsed": 37, "failed": 3, "rate": 0.925},
  }
  t = demo.targets(cal, syn)
  assert (
    t["catts_vs_majority_at_4"]["holds"]
    and "+20.0 points [+3.0, +35.0]" in t["catts_vs_majority_at_4"]["value"]
  )
  assert t["expert_voter_parsed"]["holds"] and not t["expert_critic_parsed"]["holds"]
  syn["catts_vs_majority"] = {"diff": 20.0, "low": -1.0, "high": 35.0}  # higher, but not surely
  assert not demo.targets(cal, syn)["catts_vs_majority_at_4"]["holds"]


def test_module_steps_add_one_module_per_row_with_paired_differences():
  """Rows in MODULE_STEPS order; each row's difference is to the row above on the same problems."""

  def record(correct, modules=(), by="ablation"):
    return {"correct": correct, "modules": list(modules), "plan": {"by": by}}

  from catts_jax.tts.planner import SELF_CONSISTENCY, SELF_REFLECTION, VISUAL_SELF_CHECK

  voter = {"module": SELF_CONSISTENCY, "ran": True, "voter": {"ran": True}}
  sr, sck = {"module": SELF_REFLECTION, "ran": True}, {"module": VISUAL_SELF_CHECK, "ran": False}
  per = {  # method -> its answers' correctness on four problems at N=2
    "majority": [1, 0, 0, 0], "sc": [1, 1, 0, 0], "sc+voter": [1, 1, 1, 0],
    "sc+voter+sr": [1, 1, 1, 0], "sc+voter+sr+sck": [1, 1, 1, 1], "catts": [1, 1, 1, 1],
  }  # fmt: skip
  rows = []
  for i in range(4):
    methods = {m: {"1": record(0), "2": record(v[i], [voter, sr, sck], "expert" if i else "default")}
               for m, v in per.items()}  # fmt: skip
    rows.append({"id": str(i), "methods": methods})
  summary = {
    "accuracy": {m: {"1": 0.0, "2": sum(v) / 4} for m, v in per.items()},
    "slope": {m: {"beta": 1.0, "low": 0.0, "high": 2.0} for m in per},
  }
  table = tts_summary.module_steps(rows, summary, [1, 2])
  assert [r["method"] for r in table] == [m for m, _ in tts_summary.MODULE_STEPS]
  assert [r["vs row above @2"][:5] for r in table] == ["-", "+25.0", "+25.0", "+0.0 ", "+25.0", "+0.0 "]
  assert [r["ran"] for r in table] == ["-", 4, 4, 4, 0, 3]  # SCk never ran; the Expert planned 3 of 4


def test_served_figures_do_not_depend_on_the_order_rows_were_written(tmp_path):
  """The engine writes rows as problems finish; the paired intervals are those of benchmark order."""
  rng = np.random.default_rng(0)
  methods = [m for m, _ in tts_summary.MODULE_STEPS]
  rows = [
    {"id": f"p{i}", "index": i, "methods": {m: {"4": {"correct": int(rng.random() < 0.6), "modules": [], "plan": {"by": "ablation"}}}
                                             for m in methods}}
    for i in range(40)
  ]  # fmt: skip
  syn = {
    "expert": "e", "expert_calls": {},
    "accuracy": {m: {"4": 0.5} for m in methods}, "slope": {m: {"beta": 0.0, "low": 0.0, "high": 0.0} for m in methods},
  }  # fmt: skip
  figures = []
  for name, order in (("in_order", rows), ("finished", [rows[i] for i in rng.permutation(40)])):
    (tmp_path / name).mkdir()
    runs.write_lines(tmp_path / name / "results.jsonl", order)
    figures.append(demo.served_figures(tmp_path / name, syn))
  assert (
    figures[0] == figures[1]
    and figures[0]["catts_vs_majority"]["high"] > figures[0]["catts_vs_majority"]["low"]
  )


def test_the_expert_fingerprint_follows_the_weights_not_the_record(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "model.safetensors").write_bytes(b"weights")
  before = demo.fingerprint(tmp_path)
  (tmp_path / "training.json").write_text('{"seconds": 1}')  # the record is not the model
  assert demo.fingerprint(tmp_path) == before
  (tmp_path / "model.safetensors").write_bytes(b"other weights")
  assert demo.fingerprint(tmp_path) != before
  with pytest.raises(demo.InputError, match="--expert .*nowhere: not a checkpoint"):
    with demo.expert_servers(str(tmp_path / "nowhere"), tmp_path, replicas=1):
      pass


def test_a_bad_catts_input_is_an_input_error_before_any_work(tmp_path):
  """Only refused settings or data become demo.InputError (one line from infer.demo); the
  error names the stage's directory and the bad item, and nothing is written."""
  from configs import catts

  out = tmp_path / "catts_mathvision"
  with pytest.raises(demo.InputError, match="catts_mathvision.*/nonexistent"):
    demo.catts_run(
      out, catts.get_config(), str(ROOT / "checkpoints" / "synthetic_cdrl"), 8, 0.7,
      benchmark="mathvision", data_path="/nonexistent", ns="1",
    )  # fmt: skip
  assert not out.exists()


def test_catts_stages_of_one_checkpoint_share_its_policy_and_draws(tmp_path, monkeypatch):
  """A second CA-TTS stage on the same checkpoint and settings loads no policy and draws no
  sample: it reads the first stage's back, and its rows are the same."""
  from catts_jax.policy import Policy
  from catts_jax.tts import run as tts_run
  from configs import catts

  loads, draws = [], []
  load, sample = tts_run.Job.load_policy, Policy.sample
  monkeypatch.setattr(tts_run.Job, "load_policy", lambda job: loads.append(1) or load(job))
  monkeypatch.setattr(Policy, "sample", lambda *a, **k: draws.append(1) or sample(*a, **k))
  policies: dict = {}
  stage = dict(benchmark="synthetic", split="validation", data_dir=str(tmp_path / "tfds"), limit=2, ns="2",
               methods="majority", policies=policies)  # fmt: skip
  cdrl = str(ROOT / "checkpoints" / "synthetic_cdrl")
  first = demo.catts_run(tmp_path / "first", catts.get_config(), cdrl, 8, 0.7, **stage)
  second = demo.catts_run(tmp_path / "second", catts.get_config(), cdrl, 8, 0.7, **stage)
  assert len(loads) == 1 and len(draws) == 1  # one chunk of 2 problems (batch_size 4), drawn once
  assert first["accuracy"] == second["accuracy"]
  rows = [(tmp_path / d / "results.jsonl").read_text() for d in ("first", "second")]
  strip = lambda text: [
    {k: v for k, v in json.loads(line).items() if k != "timing"} for line in text.splitlines()
  ]  # noqa: E731
  assert strip(rows[0]) == strip(rows[1])


def test_demo_runs_every_stage_and_resumes(tmp_path):
  """The demo as a program on tiny sizes (the bundled checkpoints, a few problems), on the
  validation split (where settings are chosen: it reads validation problems only); a rerun
  with `--mv_limit 0` reads every finished stage back and leaves Math-Vision out."""
  out = tmp_path / "demo"
  args = [
    sys.executable, "-m", "infer.demo", f"--out={out}", f"--data_dir={tmp_path / 'tfds'}",
    "--split=validation", "--calibration_size=4", "--limit=2", "--n=1,2", "--max_new_tokens=8",
    "--temperature=0.9", "--config.tts.reflection_threshold=0.97",
  ]  # fmt: skip
  # A subprocess, as a user runs it: the demo quiets the Expert's logger for its whole process.
  env = cpu_env(1)
  env.pop("HF_HUB_OFFLINE", None)  # huggingface_hub's client would refuse the local Expert server
  done = subprocess.run(
    [*args, "--mv_limit=1"], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
  )
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((out / "report.json").read_text())
  assert result["split"] == "validation"
  assert result["calibration"]["sft"]["n"] == 4 and result["synthetic"]["problems"] == 2
  assert result["mathvision"]["problems"] == 1
  # The Expert served by `transformers serve`, named by its checkpoint, not by its port.
  syn = result["synthetic"]
  expert = ROOT / "checkpoints" / "synthetic_expert"
  assert syn["expert"] == f"transformers serve {expert} ({demo.fingerprint(expert)})"
  assert [r["method"] for r in syn["module_steps"]] == [m for m, _ in tts_summary.MODULE_STEPS]
  assert syn["parse"]["planner"]["calls"] == 2 and "voter-alone" in syn["accuracy"]
  assert result["synthetic_self"]["problems"] == 2 and "expert_planner_parsed" in result["targets"]
  assert (out / "expert_server.log").stat().st_size > 0 and "Module by module" in done.stdout
  assert (out / "expert_server_2.log").stat().st_size > 0  # --expert_replicas 2
  assert result["synthetic"]["temperature"] == 0.9 and "samples at temperature 0.9" in done.stdout
  run = json.loads((out / "catts_synthetic" / "run.json").read_text())  # --config reaches the run
  assert run["config"]["tts"]["reflection_threshold"] == 0.97
  # The verdicts are those of the report's own figures.
  recomputed = demo.targets(result["calibration"], result["synthetic"])
  assert json.dumps(result["targets"], sort_keys=True) == json.dumps(recomputed, sort_keys=True)
  rows = [json.loads(line) for line in (out / "catts_synthetic" / "results.jsonl").read_text().splitlines()]
  assert sorted(r["id"] for r in rows) == ["validation-00000", "validation-00001"]
  for png in ("reliability_sft.png", "reliability_cdrl.png", "confidence_under_noise.png"):
    assert (out / png).stat().st_size > 0
  assert (out / "catts_synthetic" / "accuracy_vs_n.png").is_file()
  assert (
    "Targets" in done.stdout and "Single samples:" in done.stdout and "within-problem auroc" in done.stdout
  )

  # A rerun reads every finished stage back: the same figures; Math-Vision left out.
  again = subprocess.run(
    [*args, "--mv_limit=0"], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
  )
  assert again.returncode == 0, again.stderr[-3000:]
  rerun = json.loads((out / "report.json").read_text())
  assert rerun["calibration"] == result["calibration"] and rerun["synthetic"] == result["synthetic"]
  assert rerun["mathvision"] is None and "Math-Vision" not in demo.markdown(rerun)
  assert "synthetic validation split" in demo.markdown(rerun)
  # Its wall time adds to the first run's instead of replacing it with read-back time.
  assert rerun["seconds"] == json.loads((out / "seconds.json").read_text())
  assert all(rerun["seconds"][k] > result["seconds"][k] for k in ("calibration", "catts_synthetic", "total"))
  assert rerun["seconds"]["catts_mathvision"] == result["seconds"]["catts_mathvision"]

  readme = tmp_path / "README.md"
  readme.write_text("a\n<!-- demo-table:start -->\nSTALE BLOCK\n<!-- demo-table:end -->\nb\n")
  assert demo_cli.main([f"--out={out}", f"--render_readme={readme}"]) == 0
  text = readme.read_text()
  assert "Targets" in text and "STALE BLOCK" not in text and text.startswith("a\n") and text.endswith("b\n")


def test_bundle_copies_the_export_with_its_record(tmp_path):
  from catts_jax.rl.bundle import bundle

  run = tmp_path / "run"
  (run / "final").mkdir(parents=True)
  (run / "final" / "model.safetensors").write_bytes(b"weights")
  (run / "report.json").write_text(json.dumps({"seconds": 12.5, "final_checkpoint": str(run / "final")}))
  dest = tmp_path / "bundled"
  dest.mkdir()
  (dest / "stale.safetensors").write_bytes(b"old")  # a previous bundle is replaced, not merged
  summary = bundle(run, dest, "python -m train.sft --config configs/synthetic_tiny.py")
  assert summary["seconds"] == 12.5
  assert sorted(p.name for p in dest.iterdir()) == ["model.safetensors", "training.json"]
  record = json.loads((dest / "training.json").read_text())
  assert record == {"command": "python -m train.sft --config configs/synthetic_tiny.py", "seconds": 12.5}


def test_rebuild_trains_sft_then_cdrl_then_the_expert_on_the_bundled_policy(tmp_path, monkeypatch):
  """`make checkpoints`: each stage reads the bundle of the one before; a finished stage is
  not trained again."""
  from catts_jax.rl import bundle as bundle_lib
  from configs import synthetic_expert, synthetic_tiny, synthetic_tiny_cdrl

  trained = []

  def fake(stage):
    def train(cfg, out):
      source = {"sft": lambda: None, "cdrl": lambda: cfg.model.ckpt, "expert": lambda: cfg.policy.ckpt}[
        stage
      ]()
      trained.append((stage, source))
      (out / "final").mkdir(parents=True)
      (out / "final" / "model.safetensors").write_bytes(stage.encode())
      (out / "report.json").write_text(json.dumps({"seconds": 1.0}))

    return train

  monkeypatch.setattr(bundle_lib.sft, "train", fake("sft"))
  monkeypatch.setattr(bundle_lib.trainer, "train", fake("cdrl"))
  monkeypatch.setattr(bundle_lib.expert_sft, "train", fake("expert"))
  configs = lambda: (
    synthetic_tiny.get_config(),
    synthetic_tiny_cdrl.get_config(),
    synthetic_expert.get_config(),
  )  # noqa: E731
  dest = tmp_path / "checkpoints"
  bundle_lib.rebuild(*configs(), tmp_path / "runs", dest, None)
  assert trained == [
    ("sft", None),
    ("cdrl", str(dest / "synthetic_sft")),
    ("expert", str(dest / "synthetic_cdrl")),
  ]
  record = json.loads((dest / "synthetic_expert" / "training.json").read_text())
  assert record["command"] == "python -m train.expert --config configs/synthetic_expert.py"
  bundle_lib.rebuild(*configs(), tmp_path / "runs", dest, None)  # every report exists: nothing trains
  assert len(trained) == 3 and (dest / "synthetic_expert" / "model.safetensors").read_bytes() == b"expert"
