"""The Expert as Critic: a short critique of one policy response, for Self-Reflection.

  text, call = critique(expert, question, images, response)
  ask = critique_ask(question, images, response)   # the same request, for Expert.ask_many

The response's tail is sent when it is long (the answer is at its end); the critique comes
back without code fences or a leading "Critique:" label, cut to `max_chars`. An empty
critique is an ExpertError with the reply's start.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from PIL import Image

from catts_jax.tts import release_prompts
from catts_jax.tts.expert import Ask, Expert, ExpertCall, system_message, user_message
from catts_jax.tts.release_prompts import check_style
from catts_jax.tts.replies import without_fences

CRITIC_SYSTEM = "You are a careful expert who reviews answers to questions about images."
CRITIC_PROMPT = """Question:
{question}

A model's response:
{response}

Check the response step by step against the image(s). Point out what it misreads in the image and where its reasoning goes wrong, and say how to fix it; if it is right, say so. Be concise and write only the critique."""
RESPONSE_MAX_CHARS = 6000  # the tail of a longer response is kept: the answer is at its end
CRITIQUE_MAX_CHARS = 2000
_CRITIQUE_LABEL = re.compile(r"^\s*(?:\*\*)?critique(?:\*\*)?\s*:\s*(?:\*\*)?", re.IGNORECASE)
# The release's format repeats the answer first: `Based on this question, your answer is "X", ...`.
_RELEASE_LEAD = re.compile(r'^based on this question, your answer is ".*?"\s*,\s*', re.IGNORECASE | re.DOTALL)


def clean_critique(text: str, max_chars: int = CRITIQUE_MAX_CHARS) -> str:
  """The critique without code fences, a leading "Critique:" label or the release format's
  lead-in, cut to max_chars."""
  text = _CRITIQUE_LABEL.sub("", without_fences(text, "").strip()).strip()
  text = _RELEASE_LEAD.sub("", text).strip()
  return text if len(text) <= max_chars else text[:max_chars].rstrip()


def critique_ask(
  question: str,
  images: Sequence[Image.Image],
  response: str,
  *,
  max_chars: int = CRITIQUE_MAX_CHARS,
  max_tokens: int = 1024,
  temperature: float = 0.0,
  answer: str = "",
  style: str = "ours",
) -> Ask:
  """The Critic's request: a critique of one response (reasoning + answer), at most max_chars
  long; an empty critique is an ExpertError. `style` "release": the release's prompt, which
  shows the Critic the `answer` alone."""
  if len(response) > RESPONSE_MAX_CHARS:
    response = "..." + response[-RESPONSE_MAX_CHARS:]
  if check_style(style) == "release":
    messages = [user_message(release_prompts.CRITIC.format(question=question, model_answer=answer), images)]
  else:
    messages = [
      system_message(CRITIC_SYSTEM),
      user_message(CRITIC_PROMPT.format(question=question, response=response), images),
    ]

  def read(expert: Expert, text: str, call: ExpertCall) -> tuple[str, ExpertCall]:
    cleaned = clean_critique(text, max_chars)
    if not cleaned:
      raise expert.unusable(call, "empty critique", text)
    return cleaned, call

  return Ask("critic", messages, max_tokens, temperature, read)


def critique(expert: Expert, *args, **kwargs) -> tuple[str, ExpertCall]:
  """`critique_ask`'s request, answered by `expert`."""
  return expert.ask(critique_ask(*args, **kwargs))
