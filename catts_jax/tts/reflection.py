"""Self-Reflection: a low-confidence winner is critiqued by the Expert and the policy answers
again with the critique in context; the new answer gets `reflection_boost * N` votes.

The gate is `voting.needs_reflection` on the table as it stands when the module runs (an
empty table reads 0 and always reflects). The response critiqued is the most confident one
that gave the current winner (a sample, an earlier re-answer, or the contrastive self-check's
VCD decode; with no winner: the most confident response). The re-answer
continues the chat: the original turn, the critiqued response as the policy's turn, then the
critique (with `prompts="release"`: one user turn, the release's analysis block after the
problem); the policy decodes with `reflection.temperature` (0 = greedy). `tts.gated` False
(the release) reflects whatever the signal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from catts_jax import data
from catts_jax.tts import release_prompts, voting
from catts_jax.tts.context import Context, Steps
from catts_jax.tts.critic import critique_ask
from catts_jax.tts.expert import ExpertError
from catts_jax.tts.planner import SELF_REFLECTION
from catts_jax.tts.release_prompts import check_style

REANSWER_PROMPT = """An expert reviewed your answer:

{critique}

Taking the review into account, solve the problem again and give your final answer in the format the question asks for."""


def reanswer_prompt(
  processor,
  example: Mapping[str, Any],
  response: str,
  critique_text: str,
  template: str | None = None,
  *,
  answer: str = "",
  style: str = "ours",
) -> str:
  """The chat prompt for a re-answer: the problem's user turn (images where
  `Policy.example_prompt` puts them, so the problem's images apply unchanged), the critiqued
  response as the assistant's turn, and the critique as a new user turn. `style` "release":
  one user turn, the problem's prompt followed by the release's analysis block (the question,
  the critiqued `answer` and the critique)."""
  prompt = data.prompt_for(example, template)
  if check_style(style) == "release":
    prompt = release_prompts.REANSWER.format(
      prompt=prompt, question=example["question"], answer=answer, critique=critique_text
    )
  content = data.chat_content(example, prompt)
  first = [
    {"type": "image"} if c["type"] == "image" else {"type": "text", "text": c["text"]} for c in content
  ]
  messages = [{"role": "user", "content": first}]
  if style == "ours":
    messages += [
      {"role": "assistant", "content": [{"type": "text", "text": response}]},
      {"role": "user", "content": [{"type": "text", "text": REANSWER_PROMPT.format(critique=critique_text)}]},
    ]
  return processor.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def self_reflection(ctx: Context, table: voting.VoteTable) -> Steps:
  """Runs the module on one problem at one N; returns its record for results.jsonl."""
  tts = ctx.tts
  signal = voting.reflection_signal(table, tts.reflection_signal, ctx.answers(), ctx.confidences())
  record: dict[str, Any] = {"module": SELF_REFLECTION, "signal": signal}
  if tts.gated and not signal < tts.reflection_threshold:
    reason = f"{tts.reflection_signal} {signal:.3f} >= threshold {tts.reflection_threshold:g}"
    return {**record, "ran": False, "reason": reason}
  if ctx.expert is None:
    return {**record, "ran": False, "reason": "no expert to critique"}
  target = ctx.representative(table.winner())
  expert_cfg = ctx.cfg.expert
  try:
    text = yield from ctx.ask(
      ("critic", target.text),
      critique_ask(
        ctx.problem.question,
        ctx.problem.images,
        target.text,
        max_tokens=expert_cfg.critic_max_tokens,
        temperature=expert_cfg.temperature,
        answer=target.answer,
        style=ctx.cfg.prompts,
      ),
    )
  except ExpertError as e:
    return {**record, "ran": False, "reason": f"critic failed: {e.record.error}"}
  new = yield from ctx.reanswer(target, text)
  added = voting.reflection_boost(table, new.answer, ctx.boost(tts.reflection_boost))
  return {
    **record,
    "ran": True,
    "critiqued": target.source,
    "critique": text,
    "response": new.text,
    "answer": new.answer,
    "correct": new.correct,
    "confidence": new.confidence,
    "added": added,
  }
