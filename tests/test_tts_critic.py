"""The Expert as Critic: the cleaned critique, the response's tail, failures."""

import pytest
from PIL import Image
from serving import Replies

from catts_jax.tts import expert as ex
from catts_jax.tts.critic import RESPONSE_MAX_CHARS, critique

IMAGE = Image.new("RGB", (40, 30), (200, 30, 30))


def test_transport_failure_is_one_expert_error():
  expert = Replies(RuntimeError("model exploded"))
  with pytest.raises(ex.ExpertError, match="RuntimeError: model exploded") as info:
    critique(expert, "q", [], "resp")
  assert info.value.record.role == "critic" and info.value.record.attempts == 1


def test_critique_role():
  expert = Replies("```\n**Critique:** The bar for May is misread: it is 40, not 30.\n```")
  text, call = critique(expert, "q", [IMAGE], "reasoning ... The answer is 30.")
  assert text == "The bar for May is misread: it is 40, not 30." and call.ok
  assert expert.options == [(1024, 0.0)]  # (max_tokens, temperature): the defaults, in that order
  long = Replies("word " * 1000)
  text, _ = critique(long, "q", [], "r" * 10000, max_chars=100)
  assert len(text) <= 100 and text.startswith("word")
  sent = long.sent[0][1]["content"][-1]["text"]
  assert "r" * RESPONSE_MAX_CHARS in sent and "r" * (RESPONSE_MAX_CHARS + 1) not in sent
  for empty in ["", "   ", "```\n```", "Critique:"]:
    with pytest.raises(ex.ExpertError, match="empty critique"):
      critique(Replies(empty), "q", [], "r")
