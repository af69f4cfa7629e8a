"""Logits parity with transformers' Qwen2_5_VLForConditionalGeneration in float32 (<= 1e-4).

Four cases per checkpoint (text only, one image, two images of different sizes, a padded
batch of 3), images sized so merged grids are not multiples of the window. The reference
runs each prompt alone and unpadded; see catts_jax/verify.py.
"""

import json
import subprocess
import sys

import pytest

from catts_jax import verify

TOLERANCE = 1e-4


@pytest.mark.parametrize("ckpt", ["tiny_ckpt", "seven_b_ckpt", "tiny_tied_ckpt"])
def test_logits_match_transformers(ckpt, request):
  path = request.getfixturevalue(ckpt)
  report = verify.verify(path, tolerance=TOLERANCE)
  assert set(report["cases"]) == {"text_only", "one_image", "two_images", "padded_batch"}
  for name, case in report["cases"].items():
    # A logit scale of about 1 makes the absolute tolerance meaningful.
    assert 0.5 < case["reference_logit_std"] < 5, name
    assert case["max_abs_logit_diff"] <= TOLERANCE, (name, case)
    assert case["max_abs_logprob_diff"] <= TOLERANCE, (name, case)
  # KV-cached greedy decoding of the left-padded batch gives transformers' tokens exactly.
  assert all(row["match"] for row in report["greedy"]["rows"]), report["greedy"]
  assert report["ok"]


def test_partial_windows_occur(seven_b_ckpt):
  """The 7B-shaped case really exercises partial windows: some merged grid is not a multiple
  of the 4x4-cell window."""
  from catts_jax.processing import Processor

  processor = Processor(seven_b_ckpt)
  window_cells = 112 // 14 // 2
  grids = []
  for prompts, images in verify.make_cases(processor).values():
    batch = processor(prompts, images)
    if batch.image_grid_thw is not None:
      grids += batch.image_grid_thw.tolist()
  merged = [(h // 2, w // 2) for _, h, w in grids]
  assert any(h % window_cells or w % window_cells for h, w in merged), merged
  assert any(h > window_cells or w > window_cells for h, w in merged), merged  # several windows


def test_verify_cli(tiny_ckpt):
  """The program as users run it: a zero tolerance cannot be met by float arithmetic, so it
  exits nonzero, while its report shows the port within TOLERANCE (the passing run's exit 0
  is test_verify_cli_exit_code's)."""
  strict = subprocess.run(
    [sys.executable, "-m", "catts_jax.verify", "--hf", str(tiny_ckpt), "--json", "--tolerance", "0"],
    capture_output=True,
    text=True,
    check=False,
  )
  assert strict.returncode == 1, strict.stderr[-2000:]
  report = json.loads(strict.stdout)
  assert report["ok"] is False and report["tolerance"] == 0
  assert 0 < report["cases"]["one_image"]["max_abs_logit_diff"] <= TOLERANCE


@pytest.mark.parametrize("ok", [True, False])
def test_verify_cli_exit_code(ok, monkeypatch, capsys):
  case = {"max_abs_logit_diff": 0.0, "max_abs_logprob_diff": 0.0, "passed": ok}
  report = {"ok": ok, "cases": {"text_only": case}, "greedy": {"rows": [{"match": ok}]}}
  monkeypatch.setattr(verify, "verify", lambda *a, **k: report)
  assert verify.main(["--hf", "unused"]) == (0 if ok else 1)
  assert ("ok" if ok else "FAIL") in capsys.readouterr().err
