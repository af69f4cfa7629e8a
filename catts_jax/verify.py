"""Check the Flax port against transformers on a checkpoint: `python -m catts_jax.verify --hf DIR`.

Random inputs in four cases (text only; one image; two images of different sizes in one
prompt; a left-padded batch of 3 mixing them). The reference is transformers'
`Qwen2_5_VLForConditionalGeneration` in float32 on CPU, run on each prompt alone and
unpadded, so padding and bucketing in the port are checked too. Reports per case the max
|logit difference| and max |log-prob difference| over real tokens, and compares a greedy
continuation decoded with the port's KV cache against transformers' `generate`. Exits 1
when a difference is above the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from catts_jax.models.qwen2_5_vl import ModelConfig, load_hf
from catts_jax.processing import Processor
from catts_jax.sampling import Sampler, SamplingConfig
from catts_jax.scoring import Scorer

QUESTIONS = (
  "What is shown in the picture? Count the red shapes and add 12.",
  "Compare both images: which one has more lines, and by how many?",
  "Solve 3x + 7 = 22 and explain each step.",
  "Describe the image in one sentence.",
)


def random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_cases(processor: Processor, seed: int = 0) -> dict[str, tuple[list[str], list[list]]]:
  """Image sizes are chosen so the merged grids are not multiples of the window (partial windows)."""
  rng = np.random.default_rng(seed)
  one = [random_image(rng, 252, 168)]
  two = [random_image(rng, 196, 140), random_image(rng, 84, 112)]
  p = processor.chat_prompt
  return {
    "text_only": ([p(QUESTIONS[2])], [[]]),
    "one_image": ([p(QUESTIONS[0], 1)], [one]),
    "two_images": ([p(QUESTIONS[1], 2)], [two]),
    "padded_batch": (
      [p(QUESTIONS[3]), p(QUESTIONS[0], 1), p(QUESTIONS[1], 2)],
      [[], [random_image(rng, 140, 98)], [random_image(rng, 112, 168), random_image(rng, 70, 56)]],
    ),
  }


def log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


class Reference:
  """transformers' model on CPU in float32, one unpadded prompt at a time."""

  def __init__(self, path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    self.torch = torch
    self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()

  def inputs(self, processor: Processor, prompt: str, images: list):
    kwargs = dict(text=[prompt], return_tensors="pt")
    if images:
      kwargs["images"] = images
    return processor.hf(**kwargs)

  def logits(self, processor, prompt, images) -> np.ndarray:
    with self.torch.no_grad():
      return self.model(**self.inputs(processor, prompt, images)).logits[0].numpy()

  def greedy(self, processor, prompt, images, new_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, their log-probs, top-1 minus top-2 logit margin at each step)."""
    enc = self.inputs(processor, prompt, images)
    with self.torch.no_grad():
      out = self.model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=new_tokens,
        # Plain argmax for exactly new_tokens steps, as the port decodes here: no stop token,
        # and so no min_new_tokens, which would mask the end-of-turn logit when the model
        # wants to end early and make transformers pick the runner-up.
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
      )
    tokens = out.sequences[0, enc["input_ids"].shape[1] :].numpy()
    logits = np.stack([step[0].numpy() for step in out.logits])
    logprobs = np.take_along_axis(log_softmax(logits), tokens[:, None], -1)[:, 0]
    top2 = np.sort(logits, -1)[:, -2:]
    return tokens, logprobs, top2[:, 1] - top2[:, 0]


def port_logits(model, batch) -> np.ndarray:
  inputs = {k: jnp.asarray(v) for k, v in batch.model_inputs().items()}
  logits, _ = nnx.jit(lambda m, x: m(**x))(model, inputs)
  return np.asarray(logits)


def versions() -> dict[str, str]:
  import flax
  import torch
  import transformers

  return {
    "jax": jax.__version__,
    "flax": flax.__version__,
    "transformers": transformers.__version__,
    "torch": torch.__version__,
  }


def verify(
  path, *, tolerance: float = 1e-4, dtype: str = "float32", new_tokens: int = 32, seed: int = 0
) -> dict:
  jax.config.update("jax_default_matmul_precision", "highest")  # true fp32 on GPU/TPU too
  cfg = ModelConfig.from_pretrained(path).replace(dtype=dtype)
  model = load_hf(path, cfg)
  processor = Processor(path, cfg)
  reference = Reference(path)
  report = {
    "checkpoint": str(path),
    "dtype": dtype,
    "tolerance": tolerance,
    "device": jax.devices()[0].device_kind,
    "versions": versions(),
    "cases": {},
  }
  ok = True
  cases = make_cases(processor, seed)
  for name, (prompts, images) in cases.items():
    batch = processor(prompts, images)
    ours = port_logits(model, batch)
    logit_diff = logprob_diff = scale = 0.0
    for row, (prompt, imgs) in enumerate(zip(prompts, images)):
      ref = reference.logits(processor, prompt, imgs)
      mine = ours[row, batch.attention_mask[row].astype(bool)]
      logit_diff = max(logit_diff, float(np.abs(mine - ref).max()))
      logprob_diff = max(logprob_diff, float(np.abs(log_softmax(mine) - log_softmax(ref)).max()))
      scale = max(scale, float(ref.std()))
    passed = logit_diff <= tolerance and logprob_diff <= tolerance
    ok &= passed
    report["cases"][name] = {
      "max_abs_logit_diff": logit_diff,
      "max_abs_logprob_diff": logprob_diff,
      "reference_logit_std": scale,
      "passed": passed,
    }

  # Generation and scoring: greedy tokens from the KV-cached sampler must be transformers'
  # tokens, and the log-probs recorded while sampling and those of the teacher-forced scorer
  # must equal transformers' log-probs of its own greedy tokens.
  prompts, images = cases["padded_batch"]
  sampled = Sampler(model, processor.pad_id)(
    processor(prompts, images), SamplingConfig(max_new_tokens=new_tokens, temperature=0.0), jax.random.key(0)
  )
  refs = [reference.greedy(processor, p, imgs, new_tokens) for p, imgs in zip(prompts, images)]
  scored = Scorer(model)(processor.scoring_batch(prompts, [r[0] for r in refs], images))
  greedy = {"new_tokens": new_tokens, "rows": []}
  for row, (ref_tokens, ref_logprobs, margins) in enumerate(refs):
    ours = sampled.tokens[row, 0]
    mismatch = np.nonzero(ours != ref_tokens)[0]
    first = int(mismatch[0]) if len(mismatch) else None
    # A different token is not an error when the reference's choice was a near-tie.
    tokens_ok = first is None or margins[first] <= tolerance
    agree = slice(None, first)
    sampler_diff = float(np.abs(sampled.logprobs[row, 0][agree] - ref_logprobs[agree]).max())
    # Scored responses are right-aligned in a bucketed width.
    scorer_diff = float(np.abs(scored["token_logprobs"][row, -len(ref_logprobs) :] - ref_logprobs).max())
    passed = bool(tokens_ok and sampler_diff <= tolerance and scorer_diff <= tolerance)
    ok &= passed
    greedy["rows"].append(
      {
        "match": first is None,
        "first_mismatch": first,
        "max_abs_sampler_logprob_diff": sampler_diff,
        "max_abs_scorer_logprob_diff": scorer_diff,
        "passed": passed,
      }
    )
  report["greedy"] = greedy
  report["ok"] = bool(ok)
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hf", required=True, help="HF checkpoint directory")
  parser.add_argument("--tolerance", type=float, default=1e-4)
  parser.add_argument("--dtype", default="float32", help="compute dtype of the port")
  parser.add_argument("--new-tokens", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", action="store_true", help="print only the JSON report")
  args = parser.parse_args(argv)
  report = verify(
    args.hf, tolerance=args.tolerance, dtype=args.dtype, new_tokens=args.new_tokens, seed=args.seed
  )
  if not args.json:
    for name, case in report["cases"].items():
      print(
        f"{name:14s} logits {case['max_abs_logit_diff']:.2e}  log-probs "
        f"{case['max_abs_logprob_diff']:.2e}  {'ok' if case['passed'] else 'FAIL'}",
        file=sys.stderr,
      )
    matches = sum(r["match"] for r in report["greedy"]["rows"])
    print(f"greedy         {matches}/{len(report['greedy']['rows'])} rows identical", file=sys.stderr)
  print(json.dumps(report, indent=None if args.json else 2))
  return 0 if report["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
