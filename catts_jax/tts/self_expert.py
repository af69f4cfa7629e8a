"""The policy as its own Expert (`make_expert("self", policy)`): the same chat messages
rendered with its chat template and decoded by the policy, the calls asked so far in one batch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from catts_jax.tts.context import stable_seed
from catts_jax.tts.expert import PROGRAMMING_ERRORS, Ask, Expert, ExpertCall, RetryPolicy, decode_image_url


class SelfExpert(Expert):
  """The policy as its own expert: the same messages rendered with its chat template. Each
  prompt's sampling seed comes from its text, so a reply does not depend on which other
  calls share its batch or came before it. Failures (e.g. a prompt over the length limit) are
  not retried."""

  name = "self"
  batches = True

  def __init__(self, policy, seed: int = 0, decode: Mapping | None = None, batch: int = 0):
    super().__init__(RetryPolicy(max_retries=0))
    self.policy = policy
    self.seed = seed
    self.decode = dict(decode or {})  # SamplingConfig fields for every decode (compact_every, grow_cache)
    self.batch = batch  # prompts per decode in ask_many (0: a whole round)

  def render(self, messages: Sequence[Mapping]) -> tuple[str, list[Image.Image]]:
    """The chat prompt and its images in order."""
    turns, images = [], []
    for message in messages:
      content = message["content"]
      if isinstance(content, str):
        content = [{"type": "text", "text": content}]
      items = []
      for part in content:
        if part["type"] == "text":
          items.append({"type": "text", "text": part["text"]})
        elif part["type"] == "image_url":
          images.append(decode_image_url(part["image_url"]["url"]))
          items.append({"type": "image"})
        else:
          raise ValueError(f"unsupported content part type {part['type']!r}")
      turns.append({"role": message["role"], "content": items})
    prompt = self.policy.processor.hf.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return prompt, images

  def _decode(self, rendered: Sequence[tuple[str, list]], max_tokens: int, temperature: float) -> list[str]:
    """The replies to rendered prompts, in one decode of at most `max_tokens` tokens."""
    prompts = [prompt for prompt, _ in rendered]
    seeds = [stable_seed(self.seed, prompt) for prompt in prompts]
    out = self.policy.sample(
      prompts, [images for _, images in rendered], seeds=seeds, max_new_tokens=max_tokens,
      temperature=float(temperature), **self.decode,
    )  # fmt: skip
    decode = self.policy.processor.tokenizer.decode
    return [decode(row[0], skip_special_tokens=True) for row in out.token_lists()]

  def _send(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
    return self._decode([self.render(messages)], max_tokens, temperature)[0]

  def ask_many(self, asks: Sequence[Ask], concurrency: int = 1) -> list[tuple[Any, ExpertCall] | Exception]:
    """One batched decode per temperature and budget (of at most `batch` prompts); replies equal
    `ask`'s one by one. An ask that cannot be rendered fails alone; if a decode fails, its asks run one by one, so an error
    lands on the ask that caused it."""
    out: list = [None] * len(asks)
    # One decode per (temperature, budget): a decode runs until its longest row ends, so a
    # planner's short reply is not held for a critic's long one.
    groups: dict[tuple[float, int], list[tuple[int, tuple[str, list]]]] = {}
    for i, a in enumerate(asks):
      try:
        rendered = self.render(a.messages)
      except Exception:  # noqa: BLE001 - answered alone below, which records the failure
        out[i] = super().ask_many([a])[0]
        continue
      groups.setdefault((float(a.temperature), a.max_tokens), []).append((i, rendered))
    size = self.batch or len(asks)
    parts = [(key, g[k : k + size]) for key, g in groups.items() for k in range(0, len(g), size)]
    for (temperature, budget), group in parts:
      start = time.monotonic()
      try:
        texts = self._decode([rendered for _, rendered in group], budget, temperature)
      except Exception:  # noqa: BLE001 - retried one by one, each failure on its own ask
        for i, _ in group:
          out[i] = super().ask_many([asks[i]])[0]
        continue
      latency = time.monotonic() - start
      for (i, _), text in zip(group, texts):
        call = ExpertCall(asks[i].role, True, latency, 1, expert=self.name)
        try:
          out[i] = asks[i].read(self, text, call)
        except PROGRAMMING_ERRORS:
          raise
        except Exception as e:  # noqa: BLE001 - returned to the problem that asked
          out[i] = e
    return out
