"""`python -m infer.bench` runs end to end (small settings) and writes a complete report; the
committed reports render to the committed bench table; the synthetic rows hold their image."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np

from catts_jax import bench, runs
from catts_jax.models.qwen2_5_vl import presets
from infer import bench as bench_cli

ROOT = pathlib.Path(__file__).parents[1]


def test_bench_smoke(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "infer.bench",
    f"--out={tmp_path}",
    "--repeats=1",
    "--score_batch=2",
    "--score_len=128",
    "--gen_batches=1,2",
    "--new_tokens=4",
    "--prompt_len=16",
  ]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  assert 30e6 < report["params"] < 34e6
  kinds = [(r["kind"], r["batch"], r.get("image", False)) for r in report["runs"]]
  assert kinds == [
    ("scoring", 2, False),
    ("scoring", 2, True),
    ("generation", 1, False),
    ("generation", 2, False),
  ]
  for r in report["runs"]:
    assert r["catts_jax_tokens_per_s"] > 0 and r["transformers_tokens_per_s"] > 0
    assert 0 < r["catts_jax_roofline_fraction"] and r["floor_s"] > 0
  assert "speedup" in done.stdout
  assert report["args"] == {
    "device": "cpu",
    "repeats": 1,
    "score_batch": 2,
    "score_len": 128,
    "gen_batches": [1, 2],
    "prompt_len": 16,
    "new_tokens": 4,
  }


def test_render_readme_reproduces_the_committed_table(tmp_path, monkeypatch):
  """The Makefile's bench-readme command, on a copy of docs/results.md, changes nothing."""
  monkeypatch.chdir(ROOT)  # the block names the reports by their paths from the root
  doc = tmp_path / "results.md"
  shutil.copy(ROOT / "docs" / "results.md", doc)
  make = (ROOT / "Makefile").read_text()
  reports = re.search(r"^bench-readme:.*\n\t.*--reports (\S+)", make, re.MULTILINE).group(1)
  assert "bench_cpu_decode512" in reports
  assert bench_cli.main([f"--render_readme={doc}", f"--reports={reports}"]) == 0
  assert doc.read_text() == (ROOT / "docs" / "results.md").read_text()
  assert bench_cli.main([f"--render_readme={doc}"]) == 2  # no --reports


def test_synthetic_rows_hold_one_image_after_eight_tokens():
  cfg = presets.resolve({"preset": "small"})
  rows = bench.synthetic_rows(np.random.default_rng(0), cfg, 2, 96, 64, high=100)
  tokens = 64 // cfg.vision.spatial_merge_size**2
  assert rows.input_ids.shape == (2, 96) and rows.input_ids[:, :8].max() < 100
  assert (rows.input_ids[:, 8] == cfg.vision_start_token_id).all()
  assert (rows.input_ids[:, 9 : 9 + tokens] == cfg.image_token_id).all()
  assert (rows.input_ids[:, 9 + tokens] == cfg.vision_end_token_id).all()
  assert rows.image_grid_thw.tolist() == [[1, 8, 8]] * 2 and (rows.patch_image >= 0).sum() == 2 * 64
  text = bench.synthetic_rows(np.random.default_rng(0), cfg, 2, 16, 0, high=100)
  assert text.pixel_values is None and (text.positions == np.arange(16)).all()


def test_catts_bench_smoke(tmp_path):
  """`infer.bench --catts` (tiny settings): the three engines run the same problems, cold and
  warm, every batched answer is the serial one's, the warm run repeats the cold one's answers
  without compiling, and the report holds the speedups."""
  from catts_jax.tts import bench as catts_bench
  from configs import catts as catts_config

  settings = catts_bench.Settings(
    ckpt=str(ROOT / "checkpoints" / "synthetic_cdrl"), problems=2, n=2, max_new_tokens=8, solve_batch=2,
    data_dir=str(tmp_path / "tfds"),
  )  # fmt: skip
  report = catts_bench.run(settings, catts_config.get_config(), tmp_path / "out")

  def ids(path):
    return sorted(json.loads(line)["id"] for line in path.read_text().splitlines())

  for mode in catts_bench.MODES:
    cold, warm = report[mode]["cold"], report[mode]["warm"]
    assert cold["errors"] == warm["errors"] == 0 and cold["problems_per_s"] > 0
    assert cold["compile_s"] > 0 and warm["compile_s"] == 0 and warm["same_answers_as_cold"]
    for phase in ("cold", "warm"):
      assert ids(tmp_path / "out" / mode / phase / "results.jsonl") == ids(
        tmp_path / "out" / "serial" / "cold" / "results.jsonl"
      )
  for mode in catts_bench.ENGINES:
    same = report[mode]["same_answers"]
    assert same["of"] == 2 * 4 * 2 and same["equal"] == same["of"]  # problems x methods x N
  for phase, suffix in (("cold", ""), ("warm", "_warm")):
    speed = {m: report[m][phase]["problems_per_s"] for m in catts_bench.MODES}
    assert report["catts_speedup" + suffix] == speed["batched"] / speed["serial"]
    assert report["rounds_speedup" + suffix] == speed["batched_rounds"] / speed["serial"]
    assert report["catts_speedup_bound" + suffix] == speed["draw_only"] / speed["serial"]
  # The draw alone votes by majority only, over the serial run's own samples.
  draw = runs.read_rows(tmp_path / "out" / "draw_only" / "cold" / "results.jsonl")
  serial = {r["id"]: r for r in runs.read_rows(tmp_path / "out" / "serial" / "cold" / "results.jsonl")}
  assert len(draw) == len(serial) == 2
  assert all(set(r["methods"]) == {"majority"} for r in draw)
  assert all(r["methods"]["majority"] == serial[r["id"]]["methods"]["majority"] for r in draw)
  catts_bench.write(tmp_path / "out", report)
  assert "catts_speedup" in (tmp_path / "out" / "report.md").read_text()


def test_shaped_checkpoint_speaks_the_tokenizer(tmp_path):
  """`--shape`: a random-weight checkpoint of a preset's dimensions with the bundled policy's
  tokenizer and special ids loads as a Policy and decodes."""
  from catts_jax.policy import Policy
  from catts_jax.tts import bench as catts_bench

  like = ROOT / "checkpoints" / "synthetic_cdrl"
  path = catts_bench.shaped_checkpoint(tmp_path / "ckpt", "small", like)
  policy = Policy.from_pretrained(path)
  shape = presets.hf_config("small")
  assert (policy.cfg.text.hidden_size, policy.cfg.text.num_layers) == (
    shape["hidden_size"],
    shape["num_hidden_layers"],
  )
  tokenizer = policy.processor.tokenizer
  assert policy.cfg.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
  assert policy.stop_ids() == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
  out = policy.sample([policy.prompt("How many?")], max_new_tokens=4, temperature=0.0)
  assert out.tokens.shape == (1, 1, 4)


def test_timed_alternates_sides_and_keeps_every_round():
  """`bench.timed`: each side's first call apart, then rounds alternating the sides; every
  round's seconds kept, their median reported."""
  calls = []
  t = bench.timed({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
  assert calls == ["a", "b"] * 4
  assert {k: len(v) for k, v in t["times_s"].items()} == {"a": 3, "b": 3}
  assert all(t["median_s"][k] == np.median(v) for k, v in t["times_s"].items())
  assert set(t["first_call_s"]) == {"a", "b"}
