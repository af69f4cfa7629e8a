"""`python -m infer.probe` end to end on a tiny checkpoint over real Math-Vision problems."""

import json
import os
from pathlib import Path

import pytest

from catts_jax.eval.probe import Probe, ProbeConfig
from catts_jax.policy import Policy
from infer import probe

SHARED = Path(__file__).parents[2] / "shared/data/math-vision-testmini"
if not SHARED.is_dir() and os.environ.get("CI"):
  raise RuntimeError(f"{SHARED} missing")
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")


def read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_probe_end_to_end_and_resume(tiny_ckpt, tmp_path):
  out = tmp_path / "probe"
  args = [
    "--ckpt",
    str(tiny_ckpt),
    "--benchmark",
    "mathvision",
    "--data",
    str(SHARED),
    "--split",
    "testmini",
    "--data_dir",
    str(tmp_path / "tfds"),
    "--limit",
    "16",
    "--max_new_tokens",
    "8",
    "--out",
    str(out),
  ]
  assert probe.main(args) == 0
  kinds = ("noise", "occlusion", "mosaic", "viewpoint", "blur")
  rows = read_jsonl(out / "results.jsonl")
  assert len(rows) == 16 * (1 + len(kinds) * 4)
  assert not [r for r in rows if "error" in r]
  report = json.loads((out / "report.json").read_text())
  assert report["problems"] == 16
  table = {(c["kind"], c["level"]): c for c in report["conditions"]}
  assert set(table) == {(k, lv) for k in kinds for lv in (0.0, 0.25, 0.5, 0.75, 1.0)}
  for c in table.values():
    assert c["problems"] == 16 and 0 <= c["accuracy"] <= 1 and 0 < c["confidence"] <= 1
    assert c["topk_confidence"] > 0 and 0 <= c["ece"] <= 1
  assert all(table[(k, 0.0)]["confidence_drop"] == 0 for k in kinds)
  # Perturbing the image changes what the model sees, so its confidence moves.
  assert any(abs(table[(k, 1.0)]["confidence_drop"]) > 1e-4 for k in kinds)
  for kind in kinds:
    png = out / f"probe_{kind}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

  # A rerun resumes: nothing is redone; adding a level only runs the new rows.
  assert probe.main(args) == 0
  assert len(read_jsonl(out / "results.jsonl")) == len(rows)
  assert probe.main(args + ["--perturb", "blur", "--levels", "0,0.1"]) == 0
  assert len(read_jsonl(out / "results.jsonl")) == len(rows) + 16


def test_targeted_probe_and_bad_items(tiny_ckpt, tmp_path):
  from catts_jax import data
  from catts_jax.saliency import ClipSaliency

  ds = data.load("mathvision", manual_dir=SHARED, split="testmini", data_dir=tmp_path / "tfds")
  examples = [ds[i] for i in range(3)]
  examples[1] = {**examples[1], "images": [b"not an image"]}
  policy = Policy.from_pretrained(tiny_ckpt)
  cfg = ProbeConfig(kinds=("occlusion",), levels=(0.0, 1.0), targeted=True, regions=3, max_new_tokens=4)
  saliency = ClipSaliency.from_pretrained("ViT-B-32", None)
  summary = Probe(policy, examples, "mathvision", cfg, saliency).run(tmp_path / "out")
  rows = read_jsonl(tmp_path / "out" / "results.jsonl")
  bad = [r for r in rows if r["id"] == examples[1]["id"]]
  assert len(bad) == 2 and all(
    examples[1]["id"] in r["error"] and "cannot be decoded" in r["error"] for r in bad
  )
  assert all("error" not in r for r in rows if r["id"] != examples[1]["id"])
  assert [c["errors"] for c in summary["conditions"]] == [1, 1]
