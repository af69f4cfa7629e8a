"""The data types of CA-TTS (context.py)."""

from catts_jax.tts.context import stable_seed


def test_stable_seed():
  assert stable_seed(0, "draw", ["1", "2"]) == stable_seed(0, "draw", ["1", "2"])
  assert stable_seed(0, "draw", ["1", "2"]) != stable_seed(0, "draw", ["2", "1"])
  assert 0 <= stable_seed("x") < 2**31
