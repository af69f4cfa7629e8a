"""Setting rules shared by the validators (catts_jax/tts/validate.py, catts_jax/rl/validate.py):
each a (predicate, expectation) pair; `broken` says whether a value fails one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rule = tuple[Callable[[Any], bool], str]


def at_least(low: float, integer: bool = False) -> Rule:
  kind = "an integer" if integer else "a number"
  return (lambda v: v >= low, f"expected {kind} >= {low:g}")


def above(low: float) -> Rule:
  return (lambda v: v > low, f"expected a number > {low:g}")


def fraction(closed_low: bool = False) -> Rule:
  if closed_low:
    return (lambda v: 0 <= v <= 1, "expected a number in [0, 1]")
  return (lambda v: 0 < v <= 1, "expected a number in (0, 1]")


def broken(value: Any, rule: Rule) -> bool:
  """True unless `value` is a number of the rule's kind (an int where it asks for an integer;
  never a bool) that the predicate accepts (NaN never does)."""
  ok, expected = rule
  kind = int if "integer" in expected else (int, float)
  return isinstance(value, bool) or not isinstance(value, kind) or not ok(value)
