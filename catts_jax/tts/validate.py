"""Every CA-TTS setting checked before any work: a bad value is a one-line ValueError naming
the setting (`--config.sampling.top_p=0: expected a number in (0, 1]`), not a wrong run."""

from __future__ import annotations

import ml_collections

from catts_jax.rules import above, at_least, broken, fraction
from catts_jax.tts import voting
from catts_jax.tts.planner import PLANNER_MODES
from catts_jax.tts.release_prompts import check_style
from catts_jax.tts.selfcheck import SELFCHECK_MODES

# (setting, (predicate, expectation)); `dtype`, `template` and the expert's names are checked
# where they are used.
RULES = (
  ("batch_size", at_least(1, True)),
  ("solve_batch", at_least(1, True)),
  ("module_batch", at_least(0, True)),
  ("compact_every", at_least(0, True)),
  ("sampling.temperature", at_least(0)),
  ("sampling.top_p", fraction()),
  ("sampling.top_k", at_least(0, True)),
  ("sampling.max_new_tokens", at_least(1, True)),
  ("reflection.temperature", at_least(0)),
  ("reflection.max_new_tokens", at_least(1, True)),
  ("selfcheck.strength", fraction(closed_low=True)),
  ("vcd.alpha", at_least(0)),
  ("vcd.beta", fraction()),
  ("vcd.strength", fraction(closed_low=True)),
  ("tts.tau", at_least(0)),
  ("tts.reflection_boost", at_least(0)),
  ("tts.selfcheck_weight", at_least(0)),
  ("tts.adaptive_min_samples", at_least(1, True)),
  ("expert.timeout_s", above(0)),
  ("expert.max_retries", at_least(0, True)),
  ("expert.backoff_s", at_least(0)),
  ("expert.max_backoff_s", at_least(0)),
  ("expert.budget_s", above(0)),
  ("expert.failure_budget_s", at_least(0)),
  ("expert.temperature", at_least(0)),
  ("expert.planner_max_tokens", at_least(1, True)),
  ("expert.voter_max_tokens", at_least(1, True)),
  ("expert.critic_max_tokens", at_least(1, True)),
  ("expert.concurrency", at_least(1, True)),
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
    if broken(value, (ok, expected)):
      raise ValueError(f"--config.{key}={value!r}: {expected}")
  for key, choices in CHOICES:
    if _get(cfg, key) not in choices:
      raise ValueError(f"--config.{key}={_get(cfg, key)!r}: expected one of {', '.join(choices)}")
  if cfg.share_prompt and cfg.compact_every:
    raise ValueError(
      f"--config.compact_every={cfg.compact_every} with --config.share_prompt=True: compaction moves "
      "rows away from their prompt's shared KV; set one of them off"
    )
  check_style(cfg.prompts)
  return voting.TTSConfig(**cfg.tts)
