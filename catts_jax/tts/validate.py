"""Every CA-TTS setting checked before any work: a bad value is a one-line ValueError naming
the setting (`--config.sampling.top_p=0: expected a number in (0, 1]`), not a wrong run."""

from __future__ import annotations

import ml_collections

from catts_jax.tts import voting
from catts_jax.tts.planner import PLANNER_MODES
from catts_jax.tts.release_prompts import check_style
from catts_jax.tts.selfcheck import SELFCHECK_MODES


def _at_least(low: float, integer: bool = False):
  kind = "an integer" if integer else "a number"
  return (lambda v: v >= low, f"expected {kind} >= {low:g}")


def _above(low: float):
  return (lambda v: v > low, f"expected a number > {low:g}")


def _fraction(closed_low: bool = False):
  if closed_low:
    return (lambda v: 0 <= v <= 1, "expected a number in [0, 1]")
  return (lambda v: 0 < v <= 1, "expected a number in (0, 1]")


# (setting, (predicate, expectation)); `dtype`, `template` and the expert's names are checked
# where they are used.
RULES = (
  ("batch_size", _at_least(1, True)),
  ("solve_batch", _at_least(1, True)),
  ("module_batch", _at_least(0, True)),
  ("compact_every", _at_least(0, True)),
  ("sampling.temperature", _at_least(0)),
  ("sampling.top_p", _fraction()),
  ("sampling.top_k", _at_least(0, True)),
  ("sampling.max_new_tokens", _at_least(1, True)),
  ("reflection.temperature", _at_least(0)),
  ("reflection.max_new_tokens", _at_least(1, True)),
  ("selfcheck.strength", _fraction(closed_low=True)),
  ("vcd.alpha", _at_least(0)),
  ("vcd.beta", _fraction()),
  ("vcd.strength", _fraction(closed_low=True)),
  ("tts.tau", _at_least(0)),
  ("tts.reflection_boost", _at_least(0)),
  ("tts.selfcheck_weight", _at_least(0)),
  ("tts.adaptive_min_samples", _at_least(1, True)),
  ("expert.timeout_s", _above(0)),
  ("expert.max_retries", _at_least(0, True)),
  ("expert.backoff_s", _at_least(0)),
  ("expert.max_backoff_s", _at_least(0)),
  ("expert.budget_s", _above(0)),
  ("expert.failure_budget_s", _at_least(0)),
  ("expert.temperature", _at_least(0)),
  ("expert.planner_max_tokens", _at_least(1, True)),
  ("expert.voter_max_tokens", _at_least(1, True)),
  ("expert.critic_max_tokens", _at_least(1, True)),
  ("expert.concurrency", _at_least(1, True)),
)
CHOICES = (
  ("selfcheck.mode", SELFCHECK_MODES),
  ("planner.mode", PLANNER_MODES),
)


def _get(cfg: ml_collections.ConfigDict, key: str):
  for part in key.split("."):
    cfg = cfg[part]
  return cfg


def config(cfg: ml_collections.ConfigDict, limit: int | None = None) -> voting.TTSConfig:
  """The vote's settings as a TTSConfig, after checking every setting and `limit`."""
  if limit is not None and limit < 1:
    raise ValueError(f"--limit {limit}: expected a positive number of problems (omit it for all)")
  for key, (ok, expected) in RULES:
    value = _get(cfg, key)
    integer = "integer" in expected
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not ok(value):
      raise ValueError(f"--config.{key}={value!r}: {expected}")
  for key, choices in CHOICES:
    if _get(cfg, key) not in choices:
      raise ValueError(f"--config.{key}={_get(cfg, key)!r}: expected one of {', '.join(choices)}")
  check_style(cfg.prompts)
  return voting.TTSConfig(**cfg.tts)
