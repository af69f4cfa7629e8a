"""Every CA-TTS setting is checked before any work: one line naming the setting."""

from __future__ import annotations

import math

import pytest

from catts_jax.tts import validate
from configs import catts as catts_config


@pytest.mark.parametrize(
  "key, value, words",
  [
    ("batch_size", 0, "--config.batch_size=0: expected an integer >= 1"),
    ("solve_batch", -1, "--config.solve_batch=-1"),
    ("sampling.temperature", -1.0, "--config.sampling.temperature=-1.0: expected a number >= 0"),
    ("sampling.top_p", 0.0, "--config.sampling.top_p=0.0: expected a number in (0, 1]"),
    ("sampling.top_p", 1.5, "--config.sampling.top_p=1.5"),
    ("sampling.max_new_tokens", 0, "--config.sampling.max_new_tokens=0"),
    ("vcd.beta", 0.0, "--config.vcd.beta=0.0"),
    ("vcd.alpha", math.nan, "--config.vcd.alpha=nan"),
    ("selfcheck.strength", 1.5, "--config.selfcheck.strength=1.5: expected a number in [0, 1]"),
    ("tts.tau", -0.5, "--config.tts.tau=-0.5"),
    ("expert.concurrency", 0, "--config.expert.concurrency=0"),
    ("expert.timeout_s", 0.0, "--config.expert.timeout_s=0.0: expected a number > 0"),
    ("planner.mode", "sometimes", "--config.planner.mode='sometimes': expected one of paper, adaptive, off"),
    ("selfcheck.mode", "vcd", "--config.selfcheck.mode='vcd'"),
    ("prompts", "paper", "--config.prompts='paper': expected one of ours, release"),
    ("compact_every", 4, "--config.compact_every=4 with --config.share_prompt=True"),
  ],
)
def test_a_bad_setting_is_named(key, value, words):
  cfg = catts_config.get_config()
  *path, last = key.split(".")
  node = cfg
  for part in path:
    node = node[part]
  node[last] = value
  with pytest.raises(ValueError) as err:
    validate.config(cfg)
  assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(limit):
  with pytest.raises(ValueError, match=f"--limit {limit}: expected a positive number"):
    validate.config(catts_config.get_config(), limit)


@pytest.mark.parametrize("preset", catts_config.PRESETS)
def test_every_preset_passes(preset):
  assert validate.config(catts_config.get_config(preset), 3).tau == 0.5
