"""Teacher-forced scoring: log-probs equal transformers', aggregations equal numpy, bounded
compilations."""

import numpy as np
import pytest
import torch
import transformers
from tiny_hf import random_image

from catts_jax.models.qwen2_5_vl import load_hf
from catts_jax.processing import Processor
from catts_jax.scoring import ConfidenceConfig, Scorer, response_scores
from catts_jax.verify import make_cases


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
  return load_hf(tiny_ckpt), Processor(tiny_ckpt)


def reference_logprobs(path, processor, prompt, images, response):
  """transformers, one unpadded row: log-softmax of the logits before each response token."""
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
  kwargs = dict(text=[prompt], return_tensors="pt")
  if images:
    kwargs["images"] = images
  enc = processor.hf(**kwargs)
  response = torch.tensor([response])
  n = response.shape[1]
  enc["input_ids"] = torch.cat([enc["input_ids"], response], 1)
  enc["attention_mask"] = torch.ones_like(enc["input_ids"])
  enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(response)], 1)
  with torch.no_grad():
    logits = model(**enc).logits[0, -n - 1 : -1]
  return torch.log_softmax(logits, -1).gather(-1, response[0][:, None])[:, 0].numpy()


def test_token_logprobs_match_transformers(tiny, tiny_ckpt):
  model, processor = tiny
  prompts, images = make_cases(processor)["padded_batch"]
  responses = [
    processor.tokenize("There are 12 red shapes, so the answer is 24."),
    processor.tokenize("Both images"),
    processor.tokenize("x = 5 because 3 times 5 plus 7 is 22; the second image has three more lines."),
  ]
  out = Scorer(model)(processor.scoring_batch(prompts, responses, images))
  for row, (prompt, imgs, response) in enumerate(zip(prompts, images, responses)):
    ref = reference_logprobs(tiny_ckpt, processor, prompt, imgs, response)
    mask = out["response_mask"][row]
    assert mask.sum() == len(response)
    np.testing.assert_allclose(out["token_logprobs"][row][mask], ref, atol=1e-4, rtol=0)
    assert abs(out["nmlp"][row] + ref.mean()) <= 1e-4
    assert abs(out["confidence"][row] - np.exp(ref.mean())) <= 1e-4


def test_image_conditions_in_one_batch(tiny):
  """One response scored under the original and a different image in one batch equals
  scoring each alone, and the image changes the score."""
  model, processor = tiny
  rng = np.random.default_rng(3)
  orig, other = random_image(rng, 112, 84), random_image(rng, 112, 84)
  prompt = processor.chat_prompt("How many squares?", 1)
  response = processor.tokenize("I count 7 squares.")
  scorer = Scorer(model)
  both = scorer(processor.scoring_batch([prompt, prompt], [response, response], [[orig], [other]]))
  alone = scorer(processor.scoring_batch([prompt], [response], [[other]]))
  assert abs(both["nmlp"][1] - alone["nmlp"][0]) <= 1e-5
  assert abs(both["nmlp"][0] - both["nmlp"][1]) > 1e-3


def test_compilations_are_bounded(tiny):
  """Eight calls with different prompt/response lengths and batch sizes fall into at most two
  bucketed shapes, and the scorer compiles once per shape."""
  model, processor = tiny
  # Programs are shared by every scorer of this architecture and these settings: settings of
  # its own (top_k 7) keep other tests' programs out of the count.
  scorer = Scorer(model, ConfidenceConfig(top_k=7))
  words = "one two three four five six seven eight nine ten".split()
  shapes = set()
  for i in range(8):
    rows = 3 + i % 2
    prompts = [processor.chat_prompt(" ".join(words[: 1 + i % 4]))] * rows
    responses = [processor.tokenize(" ".join(words[: 2 + i]))] * rows
    sb = processor.scoring_batch(prompts, responses)
    shapes.add((sb.batch.input_ids.shape, sb.response_len))
    scorer(sb)
  assert len(shapes) <= 2, shapes
  assert scorer.compilations == len(shapes)


# --- aggregations against a plain numpy reference ------------------------------------------


def numpy_reference(token_logp, topk_logp, length, cfg):
  """One row: the first `length` entries are the response."""
  lp, topk = token_logp[:length], topk_logp[:length]
  conf = -topk.mean(-1)
  w = min(cfg.window, length)
  windows = [conf[i : i + w].mean() for i in range(length - w + 1)]
  k = max(int(np.floor(len(windows) * cfg.bottom_fraction)), 1)
  return {
    "nmlp": -lp.mean(),
    "confidence": np.exp(lp.mean()),
    "conf_mean": conf.mean(),
    "conf_tail": conf[-cfg.tail :].mean(),
    "conf_bottom": np.sort(windows)[:k].mean(),
    "conf_min_window": min(windows),
  }


@pytest.mark.parametrize(
  "cfg", [ConfidenceConfig(top_k=4, tail=5, window=6), ConfidenceConfig(top_k=3, tail=50, window=2048)]
)
def test_aggregations_equal_numpy(cfg):
  rng = np.random.default_rng(0)
  lengths = [1, 5, 6, 7, 23, 40]
  width = 40
  token_logp = -rng.exponential(1.0, (len(lengths), width)).astype(np.float32)
  topk = -np.sort(rng.exponential(2.0, (len(lengths), width, cfg.top_k)), -1).astype(np.float32)
  for align in ("left", "right"):  # the sampler's responses start at 0; the scorer's end at R
    mask = np.zeros((len(lengths), width), bool)
    lp, tk = np.zeros_like(token_logp), np.zeros_like(topk)
    for i, n in enumerate(lengths):
      sl = slice(0, n) if align == "left" else slice(width - n, width)
      mask[i, sl] = True
      lp[i, sl], tk[i, sl] = token_logp[i, :n], topk[i, :n]
    got = {k: np.asarray(v) for k, v in response_scores(lp, tk, mask, cfg).items()}
    for i, n in enumerate(lengths):
      ref = numpy_reference(token_logp[i], topk[i], n, cfg)
      for name, value in ref.items():
        assert got[name][i] == pytest.approx(value, rel=1e-5, abs=1e-5), (align, n, name)
