"""`python -m infer.bench` runs end to end (small settings) and writes a complete report."""

import json
import subprocess
import sys


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
