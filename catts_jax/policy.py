"""The facade that users, rl/ and tts/ call: a model, its processor, a scorer and a sampler.

policy = Policy.from_pretrained("/path/to/Qwen2.5-VL-7B-Instruct")
prompt = policy.prompt("How many bricks are missing?", num_images=1)
out = policy.sample([prompt], [[image]], n=8, max_new_tokens=256, temperature=0.7, seed=0)
out.texts[0]                      # 8 responses
out.scores["confidence"][0]       # exp(-NMLP) of each, from the same pass
s = policy.score([prompt] * 2, [out.tokens[0, 0]] * 2, [[image], [noisy_image]])
s["confidence"]                   # the same response under both image conditions
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from catts_jax import sampling, scoring, vision_program
from catts_jax.draws import prompt_keys
from catts_jax.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL, load_hf, save_hf
from catts_jax.processing import Processor
from catts_jax.sampling import SampleOutput, Sampler, SamplingConfig
from catts_jax.scoring import ConfidenceConfig, Scorer


@dataclasses.dataclass
class Samples(SampleOutput):
  texts: list[list[str]] = dataclasses.field(default_factory=list)  # [B][n], special tokens dropped


class Policy:
  def __init__(
    self,
    model: Qwen2_5_VL,
    processor: Processor,
    confidence: ConfidenceConfig = ConfidenceConfig(),
    mesh: Mesh | None = None,
  ):
    """With a `mesh` (the model's params laid out on it), the scorer and the sampler shard
    their rows over data x fsdp."""
    self.model = model
    self.processor = processor
    self.confidence = confidence
    self.scorer = Scorer(model, confidence, mesh=mesh)
    self.sampler = Sampler(model, processor.pad_id, mesh=mesh)

  @classmethod
  def from_pretrained(
    cls,
    path: str | pathlib.Path,
    *,
    dtype: str = "float32",
    mesh: Mesh | None = None,
    confidence: ConfidenceConfig = ConfidenceConfig(),
    allow_partial: bool = False,
    **processor_kwargs,
  ) -> Policy:
    """From an HF checkpoint directory; `dtype` is the compute dtype (params stay float32).
    `allow_partial`: tensors config.json does not describe are ignored instead of an error."""
    cfg = ModelConfig.from_pretrained(path).replace(dtype=dtype)
    model = load_hf(path, cfg, mesh=mesh, allow_partial=allow_partial)
    return cls(model, Processor(path, cfg, **processor_kwargs), confidence, mesh)

  @property
  def cfg(self) -> ModelConfig:
    return self.model.cfg

  def stop_ids(self) -> tuple[int, ...]:
    """The model's EOS ids and the tokenizer's (Qwen: <|im_end|> and <|endoftext|>)."""
    ids = self.cfg.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids]) - {None}
    if self.processor.tokenizer.eos_token_id is not None:
      ids.add(self.processor.tokenizer.eos_token_id)
    return tuple(sorted(ids))

  def prompt(self, question: str, num_images: int = 0, system: str | None = None) -> str:
    return self.processor.chat_prompt(question, num_images, system)

  def example_prompt(self, example: dict, template: str | None = None) -> tuple[str, list]:
    """A benchmark example's rendered prompt and its images in prompt order (images sit at
    their <image n> tags where the benchmark places them); errors name the example."""
    from catts_jax import data

    text = data.prompt_for(example, template)
    content = data.chat_content(example, text)
    images = data.decode_images(example)
    return self.processor.chat(content), [images[c["index"]] for c in content if c["type"] == "image"]

  def solution_tokens(self, example: dict) -> list[int]:
    """The example's reference solution (`metadata.solution`) + <|im_end|>, as a response to
    teacher-force (so the model learns to stop); errors name the example."""
    solution = example["metadata"].get("solution")
    if not solution:
      raise ValueError(f"{example['id']}: no metadata.solution to train on")
    return self.processor.tokenize(solution) + [self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]

  def score(
    self,
    prompts: Sequence[str],
    responses: Sequence[Sequence[int] | str],
    images: Sequence[Sequence] | None = None,
    *,
    state=None,
    micro_batch: int = 0,
  ) -> dict[str, np.ndarray]:
    """Teacher-forced scores of each (prompt, images, response) row: token_logprobs [B, R]
    (responses right-aligned, see response_mask), nmlp, confidence, conf_mean, conf_tail,
    conf_bottom, conf_min_window [B]. Score one response under several image conditions by
    repeating it with each condition's images. `state` overrides the params; `micro_batch`
    rows per scorer call (0: one call), per-token arrays then right-aligned to the widest."""
    images = images or [[] for _ in prompts]
    size = micro_batch or len(prompts)
    parts = [
      self.scorer(
        self.processor.scoring_batch(prompts[i : i + size], responses[i : i + size], images[i : i + size]),
        state=state,
      )
      for i in range(0, len(prompts), size)
    ]
    if len(parts) == 1:
      return parts[0]
    width = max(p["token_logprobs"].shape[1] for p in parts)
    left_pad = lambda x: np.pad(x, ((0, 0), (width - x.shape[1], 0)))  # noqa: E731
    return {k: np.concatenate([left_pad(p[k]) if p[k].ndim == 2 else p[k] for p in parts]) for k in parts[0]}

  def sample(
    self,
    prompts: Sequence[str],
    images: Sequence[Sequence] | None = None,
    *,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    contrast_images: Sequence[Sequence] | None = None,
    config: SamplingConfig | None = None,
    **overrides,
  ) -> Samples:
    """`n` samples per prompt (fields of SamplingConfig as keywords; stop_ids default to the
    EOS ids). `contrast_images` switches on VCD contrastive decoding against them. `seeds`,
    one per prompt, make each prompt's samples independent of the rest of the batch (default:
    `seed` draws the whole batch)."""
    config = config or SamplingConfig(stop_ids=self.stop_ids())
    config = dataclasses.replace(config, **overrides)
    batch = self.processor(prompts, images)
    contrast = None if contrast_images is None else self.processor(prompts, contrast_images)
    if seeds is None:
      key = jax.random.key(seed)
    elif len(seeds) != len(prompts):
      raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one per prompt")
    else:
      key = prompt_keys(seeds, batch.input_ids.shape[0])
    out = self.sampler(batch, config, key, contrast=contrast)
    decode = self.processor.tokenizer.decode
    texts = [[decode(t, skip_special_tokens=True) for t in row] for row in out.token_lists()]
    fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return Samples(**fields, texts=texts)

  def save_pretrained(self, out_dir: str | pathlib.Path) -> pathlib.Path:
    return save_hf(self.model, out_dir, processor_dir=self.processor.path)


def forget_compiled() -> None:
  """Drop every compiled program (JAX's caches, and the programs scorers, samplers and the
  vision tower share), so that the next calls compile afresh as a new process would: a
  benchmark's cold run."""
  jax.clear_caches()
  scoring.programs.cache_clear()
  sampling.programs.cache_clear()
  vision_program.forget()
