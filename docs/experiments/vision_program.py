"""Would running the vision tower as its own program cut the demo's compiles? Every scorer and
prefill program with images compiles the tower inside it; CA-TTS compiles many of them (row,
length and response buckets) over few image shapes. Here, on the bundled CDRL checkpoint, the
scorer's programs for the shapes the demo's self-check asks for, compiled two ways, each in a
fresh process: today's (pixels in, the tower inside every program) against the tower compiled
once per image-slot shape and the scorer given its features (`image_features`, which the model
already takes). Also: the two ways' confidences, which must agree.

  python docs/experiments/vision_program.py docs/reports/vision_program/report.json

Built since as catts_jax/vision_program.py (de2cbce); the "inside" way here still compiles the
tower into the scorer's program, as the code before it did.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

from catts_jax import runs

CKPT = pathlib.Path(__file__).parents[2] / "checkpoints" / "synthetic_cdrl"
# (rows, response tokens): the self-check's scoring calls in the demo (2-8 rows; one image).
SHAPES = ((2, 16), (2, 32), (4, 16), (4, 32), (4, 64), (8, 32), (8, 64))

ONE_WAY = r"""
import json, sys, time
import jax, jax.monitoring, jax.numpy as jnp, numpy as np
from flax import nnx
from PIL import Image
from catts_jax import scoring
from catts_jax.policy import Policy

way, ckpt, shapes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
compile_s = []
jax.monitoring.register_event_duration_secs_listener(
  lambda event, seconds, **_: compile_s.append(seconds) if event == "/jax/core/compile/backend_compile_duration" else None
)
policy = Policy.from_pretrained(ckpt)
scorer = policy.scorer
image = Image.fromarray((np.random.default_rng(0).random((56, 56, 3)) * 255).astype(np.uint8))
vision = jax.jit(lambda s, x: nnx.merge(scorer.graphdef, s).image_features(**x))
with_features = jax.jit(
  lambda s, x, mask, r: scoring.response_scores(
    *scoring.chunked_statistics(nnx.merge(scorer.graphdef, s), *scoring.response_hidden(nnx.merge(scorer.graphdef, s), x, r), scorer.cfg.top_k),
    mask, scorer.cfg,
  ),
  static_argnums=3,
)
confidences = []
for rows, length in shapes:
  prompt = policy.prompt("How many bars are there?", num_images=1)
  sb = policy.processor.scoring_batch([prompt] * rows, [list(range(5, 5 + length))] * rows, [[image]] * rows)
  inputs = {k: jnp.asarray(v) for k, v in sb.batch.model_inputs().items()}
  mask = jnp.asarray(sb.response_mask)
  if way == "inside":
    out = scorer.programs.jitted(scorer.state, inputs, mask)(scorer.state, inputs, mask, sb.response_len)
  else:
    pixels = {k: inputs.pop(k) for k in ("pixel_values", "patch_pos", "patch_image")}
    inputs["image_features"] = vision(scorer.state, pixels)
    out = with_features(scorer.state, inputs, mask, sb.response_len)
  confidences.append(np.asarray(out["confidence"])[:rows].tolist())
print(json.dumps({"compile_s": sum(compile_s), "programs": len(compile_s), "confidences": confidences}))
"""


def one_way(way: str) -> dict:
  began = time.perf_counter()
  out = subprocess.run(
    [sys.executable, "-c", ONE_WAY, way, str(CKPT), json.dumps(SHAPES)],
    capture_output=True, text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )  # fmt: skip
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result["wall_s"] = time.perf_counter() - began
  return result


def main(path: str) -> None:
  rounds = {"inside": [], "own_program": []}
  for _ in range(2):  # alternated
    for way in rounds:
      rounds[way].append(one_way(way))
  a, b = rounds["inside"][0]["confidences"], rounds["own_program"][0]["confidences"]
  report = {
    "shapes": SHAPES,
    **{
      way: {
        "compile_s": [r["compile_s"] for r in rs],
        "programs": rs[0]["programs"],
        "wall_s": [r["wall_s"] for r in rs],
      }
      for way, rs in rounds.items()
    },
    "max_confidence_difference": max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)),
  }
  print(json.dumps(report, indent=1))
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  runs.write_json(path, report)


if __name__ == "__main__":
  main(sys.argv[1])
