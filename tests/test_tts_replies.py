"""Lenient JSON in a model's reply, shared by the Expert's roles."""

from catts_jax.tts.replies import extract_json


def test_extract_json_ignores_braces_in_prose_and_strings():
  text = 'Use {curly} words; then {"a": "x}y", \'b\': [1, 2]} and [SC, SR]'
  assert extract_json(text) == [["SC", "SR"], {"a": "x}y", "b": [1, 2]}]
