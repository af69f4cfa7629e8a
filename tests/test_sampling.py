"""KV-cached sampler: greedy equals transformers, sampling follows softmax, filters hold,
stops, determinism, shared prefill, VCD."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from test_sharded_sampling import assert_same_samples
from tiny_hf import random_image

from catts_jax import sharding
from catts_jax.draws import contrastive_logits, filter_logits
from catts_jax.policy import Policy, forget_compiled
from catts_jax.sampling import SamplingConfig
from catts_jax.verify import Reference, make_cases

GREEDY = SamplingConfig(max_new_tokens=32, temperature=0.0)


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
  return Policy.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="module")
def cases(policy):
  return make_cases(policy.processor)


def first_step_logits(policy, prompt, images):
  """The model's next-token logits after the prompt (full forward, no cache)."""
  batch = policy.processor([prompt], [images])
  inputs = {k: jnp.asarray(v) for k, v in batch.model_inputs().items()}
  return np.asarray(nnx.jit(lambda m, x: m(**x))(policy.model, inputs)[0][0, -1])


def test_greedy_matches_transformers_generate(policy, cases, tiny_ckpt):
  """32 new tokens on 3 prompts (0/1/2 images, different lengths) decoded together."""
  prompts, images = cases["padded_batch"]
  out = policy.sample(prompts, images, config=GREEDY)
  reference = Reference(tiny_ckpt)
  for row, (prompt, imgs) in enumerate(zip(prompts, images)):
    tokens, logprobs, _ = reference.greedy(policy.processor, prompt, imgs, 32)
    np.testing.assert_array_equal(out.tokens[row, 0], tokens)
    np.testing.assert_allclose(out.logprobs[row, 0], logprobs, atol=1e-4)
  assert out.lengths.tolist() == [[32]] * 3
  assert out.texts[0][0] == policy.processor.tokenizer.decode(out.tokens[0, 0], skip_special_tokens=True)


def test_next_token_distribution_is_softmax(policy, cases):
  """Temperature 1: 4000 first tokens from one prompt follow softmax(logits) (chi-square)."""
  prompt, imgs = cases["one_image"][0][0], cases["one_image"][1][0]
  logits = first_step_logits(policy, prompt, imgs).astype(np.float64)
  raw = np.exp(logits - logits.max())
  raw /= raw.sum()
  probs = raw.copy()
  probs[[policy.cfg.image_token_id, policy.cfg.video_token_id]] = 0  # never sampled
  probs /= probs.sum()
  n = 4000
  out = policy.sample([prompt], [imgs], n=n, max_new_tokens=1, temperature=1.0, stop_ids=(), seed=7)
  counts = np.bincount(out.tokens[0, :, 0], minlength=len(probs))
  expected = probs * n
  big = expected >= 5  # pool rare tokens so every cell has enough expected mass
  observed = np.append(counts[big], counts[~big].sum())
  expected = np.append(expected[big], expected[~big].sum())
  assert big.sum() >= 20
  p_value = stats.chisquare(observed, expected).pvalue
  assert p_value > 1e-3, p_value
  # The recorded log-prob of each sampled token is its log softmax probability.
  np.testing.assert_allclose(out.logprobs[0, :, 0], np.log(raw[out.tokens[0, :, 0]]), atol=1e-5)


def test_top_k_never_emits_excluded_tokens(policy, cases):
  """At every step the sampled token is among the k most likely: its log-prob is at least the
  k-th largest of the recorded top-20 log-probs."""
  prompts, images = cases["padded_batch"]
  out = policy.sample(prompts, images, n=8, max_new_tokens=24, temperature=1.5, top_k=3, stop_ids=(), seed=1)
  assert (out.logprobs >= out.topk_logprobs[..., 2] - 1e-6).all()
  assert len(np.unique(out.tokens)) > 3  # it did sample


def test_top_p_never_emits_excluded_tokens(policy, cases):
  prompt, imgs = cases["one_image"][0][0], cases["one_image"][1][0]
  logits = first_step_logits(policy, prompt, imgs).copy()
  logits[[policy.cfg.image_token_id, policy.cfg.video_token_id]] = -np.inf  # never sampled
  order = np.argsort(-logits)
  probs = np.asarray(jax.nn.softmax(logits))[order]
  keep = order[: int(np.searchsorted(np.cumsum(probs), 0.5)) + 1]  # smallest set with mass >= 0.5
  out = policy.sample(
    [prompt], [imgs], n=500, max_new_tokens=1, temperature=1.0, top_p=0.5, stop_ids=(), seed=3
  )
  emitted = set(out.tokens[0, :, 0].tolist())
  assert emitted <= set(keep.tolist())
  assert len(emitted) > 1 or len(keep) == 1


def test_filter_logits_top_p_is_minimal_nucleus():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (64, 50)).astype(np.float32)
  cfg = SamplingConfig(temperature=1.0, top_p=0.8)
  kept = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), cfg)))
  for row, k in zip(logits, kept):
    p = np.sort(np.exp(row - row.max()) / np.exp(row - row.max()).sum())[::-1]
    need = int(np.searchsorted(np.cumsum(p), 0.8)) + 1
    assert k.sum() == need


def test_deterministic_for_a_key(policy, cases):
  prompts, images = cases["padded_batch"]
  kw = dict(n=3, max_new_tokens=12, temperature=1.0, top_p=0.95, stop_ids=())
  a = policy.sample(prompts, images, seed=5, **kw)
  b = policy.sample(prompts, images, seed=5, **kw)
  c = policy.sample(prompts, images, seed=6, **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  assert not np.array_equal(a.tokens[:, 0], a.tokens[:, 1])  # samples of one prompt differ
  # The decode loop's carry is donated; the caller's key must survive it, to be used again.
  key, batch = jax.random.key(5), policy.processor(prompts, images)
  cfg = SamplingConfig(**kw)
  np.testing.assert_array_equal(
    policy.sampler(batch, cfg, key).tokens, policy.sampler(batch, cfg, key).tokens
  )


def test_seeds_per_prompt_make_samples_batch_independent(policy, cases):
  """With one seed per prompt, a prompt's samples are the same alone or in any batch (what
  lets CA-TTS batch the re-answers of many problems and equal its one-by-one run)."""
  prompts, images = cases["padded_batch"]
  kw = dict(n=2, max_new_tokens=10, temperature=1.0, stop_ids=())
  batch = policy.sample(prompts, images, seeds=[11, 12, 13], **kw)
  for i, seed in enumerate([11, 12, 13]):
    alone = policy.sample([prompts[i]], [images[i]], seeds=[seed], **kw)
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])
  swapped = policy.sample(prompts, images, seeds=[12, 11, 13], **kw)
  assert not np.array_equal(swapped.tokens[0], batch.tokens[0])  # the seed, not the row, decides
  assert not np.array_equal(batch.tokens[:, 0], batch.tokens[:, 1])  # samples of a prompt differ
  with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
    policy.sample(prompts, images, seeds=[1, 2], **kw)


def test_n_samples_share_prefill(policy, cases):
  """Greedy with n=4 gives 4 copies of the n=1 greedy answer for every prompt."""
  prompts, images = cases["padded_batch"]
  one = policy.sample(prompts, images, config=dataclasses.replace(GREEDY, max_new_tokens=8))
  four = policy.sample(prompts, images, config=dataclasses.replace(GREEDY, max_new_tokens=8, n=4))
  assert four.tokens.shape == (3, 4, 8)
  np.testing.assert_array_equal(four.tokens, np.repeat(one.tokens, 4, axis=1))
  np.testing.assert_allclose(four.scores["nmlp"], np.repeat(one.scores["nmlp"], 4, axis=1), atol=1e-6)


def test_no_top_k_confidences(policy, cases):
  """confidence.top_k = 0 (no DeepConf token confidences): empty top-k log-probs, the same tokens."""
  prompts, images = cases["padded_batch"]
  config = dataclasses.replace(GREEDY, max_new_tokens=4, n=2)
  none = dataclasses.replace(config, confidence=dataclasses.replace(config.confidence, top_k=0))
  out, out_none = policy.sample(prompts, images, config=config), policy.sample(prompts, images, config=none)
  assert out_none.topk_logprobs.shape == (3, 2, 4, 0)
  np.testing.assert_array_equal(out_none.tokens, out.tokens)


def test_stops_on_stop_ids(policy, cases):
  prompts, images = cases["padded_batch"]
  free = policy.sample(prompts, images, config=dataclasses.replace(GREEDY, max_new_tokens=10))
  stop = int(free.tokens[1, 0, 3])  # row 1's 4th greedy token becomes a stop token
  out = policy.sample(
    prompts, images, config=dataclasses.replace(GREEDY, max_new_tokens=10, stop_ids=(stop,))
  )
  for row in range(3):
    first = np.nonzero(free.tokens[row, 0] == stop)[0]
    n = int(first[0]) + 1 if len(first) else 10
    assert out.lengths[row, 0] == n
    np.testing.assert_array_equal(out.tokens[row, 0, :n], free.tokens[row, 0, :n])
    assert (out.tokens[row, 0, n:] == policy.processor.pad_id).all()
    assert (out.logprobs[row, 0, n:] == 0).all()
    # Confidences cover exactly the response, stop token included.
    assert out.scores["nmlp"][row, 0] == pytest.approx(-free.logprobs[row, 0, :n].mean(), abs=1e-5)


def test_contrastive_decoding(policy):
  rng = np.random.default_rng(2)
  orig, noisy = random_image(rng, 112, 84), random_image(rng, 112, 84)
  prompt = policy.prompt("What is in the image?", 1)
  cfg = dataclasses.replace(GREEDY, max_new_tokens=6, vcd_alpha=1.0, vcd_beta=0.1)
  plain = policy.sample([prompt], [[orig]], config=cfg)
  # Against the same image the contrast changes nothing: (1 + a) l - a l = l.
  same = policy.sample([prompt], [[orig]], contrast_images=[[orig]], config=cfg)
  np.testing.assert_array_equal(same.tokens, plain.tokens)
  # Against another image the first token is the argmax of the VCD formula, and the
  # recorded log-probs are the original condition's.
  vcd = policy.sample([prompt], [[orig]], contrast_images=[[noisy]], config=cfg)
  lo, ln = first_step_logits(policy, prompt, [orig]), first_step_logits(policy, prompt, [noisy])
  assert vcd.tokens[0, 0, 0] == int(np.argmax(np.asarray(contrastive_logits(lo, ln, 1.0, 0.1))))
  assert vcd.logprobs[0, 0, 0] == pytest.approx(float(jax.nn.log_softmax(lo)[vcd.tokens[0, 0, 0]]), abs=1e-5)


def test_contrastive_logits_formula():
  """Against a numpy reference, on logits whose two maxima differ (a cutoff taken from the
  contrast's logits would keep only token 0 of row 0)."""
  orig = np.array([[2.0, 1.0, -3.0, 0.5], [0.3, -1.5, 0.1, 0.25]], np.float32)
  other = np.array([[0.0, 3.5, -5.0, 0.5], [1.5, -2.0, 0.0, 0.2]], np.float32)
  alpha, beta = 0.5, 0.2
  got = np.asarray(contrastive_logits(jnp.asarray(orig), jnp.asarray(other), alpha, beta))
  cutoff = np.log(beta) + orig.max(-1, keepdims=True)
  want = np.where(orig < cutoff, -np.inf, (1 + alpha) * orig - alpha * other)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert np.isfinite(got).tolist() == [[True, True, False, True], [True, False, True, True]]


def test_sampler_compiles_once_per_shape(policy):
  """Prompts of different lengths in one bucket reuse the compiled prefill and decode. (The
  programs are shared by every sampler of this architecture: a decode length of its own keeps
  other tests' programs out of the count.)"""
  sampler = policy.sampler
  before = sampler.compilations
  shapes = set()
  for q in ("one", "one two", "one two three", "one two three four five"):
    shapes.add(policy.processor([policy.prompt(q)]).input_ids.shape)
    policy.sample([policy.prompt(q)], max_new_tokens=11, temperature=0.7, stop_ids=(), seed=0)
  assert len(shapes) <= 2
  assert sampler.compilations - before == 2 * len(shapes)  # one prefill + one decode each


def test_image_placeholders_are_never_sampled(policy):
  """At a high temperature (near uniform over 576 tokens) 8192 draws would almost surely hit
  <|image_pad|> / <|video_pad|>; the sampler must never emit them."""
  cfg = policy.cfg
  out = policy.sample([policy.prompt("hi")], n=256, max_new_tokens=32, temperature=20.0, stop_ids=(), seed=4)
  emitted = set(out.tokens.ravel().tolist())
  assert cfg.image_token_id not in emitted and cfg.video_token_id not in emitted
  assert len(emitted) > 500  # it really sampled nearly everything else


@pytest.mark.parametrize("contrast", [False, True])
def test_compacted_decode_equals_the_full_loop(policy, cases, contrast):
  """Rows that finish leave the batch every K steps; with a key per prompt every row's tokens,
  log-probs and scores equal the uncompacted loop's (greedy stops at different lengths)."""
  prompts, images = cases["padded_batch"]
  stop = policy.stop_ids()
  first = policy.sample(
    prompts, images, seeds=[1, 2, 3], n=4, max_new_tokens=24, temperature=1.0, stop_ids=()
  )
  # Stop on tokens the rows draw early, so that rows end at different steps.
  stop_ids = tuple(sorted({int(t) for t in first.tokens[:, :, 2:6].reshape(-1)}))[:6] + stop
  kw = dict(seeds=[1, 2, 3], n=4, max_new_tokens=24, temperature=1.0, stop_ids=stop_ids)
  if contrast:
    kw["contrast_images"] = [[im.rotate(90) for im in ims] for ims in images]
  full = policy.sample(prompts, images, **kw)
  compact = policy.sample(prompts, images, compact_every=3, **kw)
  assert len(set(full.lengths.reshape(-1).tolist())) > 2  # rows end at different steps
  assert_same_samples(compact, full)
  assert compact.texts == full.texts


@pytest.mark.parametrize("contrast", [False, True])
def test_growing_cache_equals_the_full_cache(policy, cases, contrast):
  """grow_cache: the cache starts at the prompt's slots rounded up to a power of two and
  doubles as the responses grow (one decode program per size); every row's tokens equal the
  full cache's, log-probs and scores to float32 rounding (rows stop at different steps, with
  and without compaction)."""
  prompts, images = cases["padded_batch"]
  new = 160
  first = policy.sample(
    prompts, images, seeds=[1, 2, 3], n=2, max_new_tokens=new, temperature=1.0, stop_ids=()
  )
  stop_ids = tuple(sorted({int(t) for t in first.tokens[:, :, 2:12].reshape(-1)}))[:3] + policy.stop_ids()
  kw = dict(seeds=[1, 2, 3], n=2, max_new_tokens=new, temperature=1.0, stop_ids=stop_ids)
  if contrast:
    kw["contrast_images"] = [[im.rotate(90) for im in ims] for ims in images]
  full = policy.sample(prompts, images, **kw)
  prompt_slots = policy.processor(prompts, images).input_ids.shape[1]
  first_size = 1 << prompt_slots.bit_length()  # the prompt and the first token fit
  assert full.lengths.min() < 20 and full.lengths.max() > first_size - prompt_slots  # it must grow
  sizes = []  # the cache sizes the decode loop ran on
  decode = policy.sampler._decode

  def spy(state, carry, **kw):
    sizes.append(carry["cache"]["valid"].shape[1])
    return decode(state, carry, **kw)

  policy.sampler._decode = spy
  try:
    grown = policy.sample(prompts, images, grow_cache=True, **kw)
    compacted = policy.sample(prompts, images, grow_cache=True, compact_every=5, **kw)
  finally:
    policy.sampler._decode = decode
  assert_same_samples(grown, full)
  assert_same_samples(compacted, full)
  assert sorted(set(sizes)) == [first_size, prompt_slots + new]  # 256, then the whole 288


@pytest.mark.parametrize("contrast", [False, True])
def test_shared_prompt_equals_repeated_prompts(policy, cases, contrast):
  """share_prompt: each prompt's KV kept once and read by its n rows together gives every row's
  tokens of the repeated copies, log-probs and scores to float32 rounding (rows stopping at
  different steps; with the growing cache too); the decode cache holds one prompt per prompt."""
  prompts, images = cases["padded_batch"]
  kw = dict(seeds=[1, 2, 3], n=4, max_new_tokens=160, temperature=1.0)
  first = policy.sample(prompts, images, stop_ids=(), **kw)
  kw["stop_ids"] = (
    tuple(sorted({int(t) for t in first.tokens[:, :, 2:12].reshape(-1)}))[:3] + policy.stop_ids()
  )
  if contrast:
    kw["contrast_images"] = [[im.rotate(90) for im in ims] for ims in images]
  repeated = policy.sample(prompts, images, **kw)
  assert len(set(repeated.lengths.reshape(-1).tolist())) > 2
  prompt_rows, slots = [], []  # each decode call's prompt rows, and its slots (prompt + own)
  decode = policy.sampler._decode

  def spy(state, carry, **kw):
    prompt = carry["cache"]["prompt"]["valid"]
    prompt_rows.append(prompt.shape[0])
    slots.append(prompt.shape[1] + carry["cache"]["valid"].shape[1])
    return decode(state, carry, **kw)

  policy.sampler._decode = spy
  try:
    shared = policy.sample(prompts, images, share_prompt=True, **kw)
    del slots[:]
    grown = policy.sample(prompts, images, share_prompt=True, grow_cache=True, **kw)
  finally:
    policy.sampler._decode = decode
  assert_same_samples(shared, repeated)
  assert_same_samples(grown, repeated)
  batch = policy.processor(prompts, images).input_ids.shape
  assert set(prompt_rows) == {batch[0] * (2 if contrast else 1)}
  # Grown as the repeated cache grows: the prompt and the first token rounded up, then whole.
  assert sorted(set(slots)) == [1 << batch[1].bit_length(), batch[1] + kw["max_new_tokens"]]


def test_shared_prompt_excludes_compaction():
  with pytest.raises(ValueError, match="share_prompt with compact_every=4"):
    SamplingConfig(share_prompt=True, compact_every=4)


def sample_and_decode_text(policy, prompts, images, **kw):
  """policy.sample's result, and its (first) decode loop's StableHLO as the sampler lowers it."""
  texts, decode = [], policy.sampler._decode

  def spy(state, carry, **static):
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, carry))
    texts.append(decode.lower(*shapes, **static).as_text())
    return decode(state, carry, **static)

  policy.sampler._decode = spy
  try:
    return policy.sample(prompts, images, **kw), texts[0]
  finally:
    policy.sampler._decode = decode


def test_tpu_decode_slices_layer_weights_inside_the_loop(policy, cases, monkeypatch):
  """Where the programs compile for TPU the decode loop slices each layer's weights out of
  their stack inside its body (before the loop, XLA copies every weight: 3.3 GB of the 7B's
  planned decode on v5e:4x4); elsewhere once, before it. Both give the same samples (the TPU's
  path run here on CPU)."""
  prompts, images = cases["padded_batch"]
  kw = dict(seeds=[1, 2, 3], n=2, max_new_tokens=13, temperature=1.0, share_prompt=True)

  def slices_in_loop(text):
    return text[text.index("stablehlo.while") :].count("stablehlo.slice")

  forget_compiled()  # programs traced for the other platform would be reused
  before, text_before = sample_and_decode_text(policy, prompts, images, **kw)
  forget_compiled()
  monkeypatch.setattr(sharding, "platform", lambda mesh: "tpu")
  in_loop, text_in_loop = sample_and_decode_text(policy, prompts, images, **kw)
  forget_compiled()
  layer_params = len(jax.tree.leaves(nnx.state(policy.model.language_model.layers)))
  assert slices_in_loop(text_in_loop) - slices_in_loop(text_before) >= layer_params
  assert_same_samples(in_loop, before)
